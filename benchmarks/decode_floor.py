"""A measured floor estimate of the KV-cache sampler's time on this machine (used by benchmarks/sampler.py).

An exact fp32 greedy sampler must, for every generated token, (1) multiply the batch's activations by every
weight matrix of the model and (2) read every valid key and value of the cache once per layer. This module
times those two parts on their own, in the same process and on the same devices as the sampler:

  matmul floor  the decode steps' weight matmuls only ([out, in] @ [in, rows] per layer and the vocabulary
                projection, in the sampler's own column layout, split into the same row groups or devices),
                chained through the residual stream so nothing can be hoisted; no attention, norms or cache;
  cache floor   the bytes of keys and values an exact sampler must read, sum over steps i of
                B x (P + i + 1) slots x K x Dh x 2 (k, v) x layers x 4 bytes, divided by the machine's
                streaming read bandwidth (a jitted sum over a 512 MiB array, best of 5).

Their sum leaves out the prefill and everything else (norms, rotary, softmax, sampling). It is an estimate
of the floor, not a strict bound: the matmul chain carries a little elementwise work (tanh, silu, a
renormalisation), the two parts are timed apart and added (overlapping compute with cache reads would go
lower), and the bandwidth comes from one unsharded sum. It shows roughly how fast an fp32 sampler made of
these XLA:CPU ops could be on this machine, and so what speed-up over transformers is within reach.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.models import ModelConfig, functional


def _best_seconds(fn, repeats: int) -> float:
  fn()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


@functools.partial(jax.jit, static_argnames=("steps", "groups"))
def _decode_matmuls(dparams: dict, x_DxB: jax.Array, steps: int, groups: int) -> jax.Array:
  """`steps` decode steps' weight matmuls on column activations x [D, B], in `groups` independent row groups."""
  d, b = x_DxB.shape
  rows = b // groups

  def chain(x_DxR):
    for layer in dparams["layers"]:
      qkv_NxR = jnp.dot(layer["w_qkv"], x_DxR)
      x_DxR = x_DxR + jnp.dot(layer["w_o"], jnp.tanh(qkv_NxR[:layer["w_o"].shape[1]]))
      gate_FxR, up_FxR = jnp.split(jnp.dot(layer["w_gate_up"], x_DxR), 2, axis=0)
      x_DxR = x_DxR + jnp.dot(layer["w_down"], jax.nn.silu(gate_FxR) * up_FxR)
    x_DxR = x_DxR + 1e-3 * jnp.sum(jnp.dot(dparams["w_out"], x_DxR), axis=0, keepdims=True)
    # renormalise each column, so that 128 chained steps neither overflow nor decay into (slow) denormals
    return x_DxR * jax.lax.rsqrt(jnp.mean(x_DxR * x_DxR, axis=0, keepdims=True) + 1e-6)

  def body(_, x_DxB):
    return jnp.concatenate([chain(x_DxB[:, g * rows:(g + 1) * rows]) for g in range(groups)], axis=1)

  return jax.lax.fori_loop(0, steps, body, x_DxB)


def matmul_floor_seconds(config: ModelConfig, params, batch: int, steps: int, groups: int,
                         sharding: jax.sharding.Sharding | None = None, repeats: int = 5) -> tuple[float, float]:
  """(seconds, FLOPs) of `steps` decode steps' weight matmuls for `batch` rows. With `sharding` (columns
  split over devices) each device runs its share of the rows, as the sampler does on a data mesh."""
  dparams = functional.decode_params(config, params)
  x_DxB = jax.random.normal(jax.random.key(0), (config.d_model, batch), jnp.dtype(config.dtype))
  if sharding is not None:
    x_DxB = jax.device_put(x_DxB, sharding)
  weights = sum(int(np.prod(w.shape)) for layer in dparams["layers"]
                for name, w in layer.items() if name.startswith("w_"))
  flops = 2.0 * batch * steps * (weights + int(np.prod(dparams["w_out"].shape)))
  return _best_seconds(lambda: _decode_matmuls(dparams, x_DxB, steps, groups), repeats), flops


def read_bandwidth(bytes_: int = 512 * 2 ** 20, repeats: int = 5) -> float:
  """Streaming read bandwidth (bytes/s): a jitted sum over a `bytes_` fp32 array, best of `repeats`."""
  x = jnp.ones((bytes_ // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  return bytes_ / _best_seconds(lambda: total(x), repeats)


def cache_bytes_read(config: ModelConfig, batch: int, prompt: int, steps: int) -> int:
  """Bytes of fp32 keys and values an exact sampler reads: step i attends over prompt + i + 1 slots."""
  slot_steps = sum(prompt + i + 1 for i in range(steps))
  per_slot = batch * config.n_kv_heads * config.head_dim * 2 * config.n_layers * 4
  return slot_steps * per_slot
