"""Hugging Face checkpoints: import and export of LlamaForCausalLM / Qwen2ForCausalLM, no torch needed.

    config, params = star_jax.models.load_hf("path/to/model_dir")           # config.json + *.safetensors
    save_hf("out_dir", config, params, architecture="LlamaForCausalLM")     # exact round trip

Weights are read tensor by tensor with `safetensors` (numpy), transposed into star_jax's layout and, when
a mesh is given, placed shard by shard (`jax.make_array_from_callback`): each device receives only its
slice and the host holds one full tensor at a time. Pickle-based `.bin` checkpoints are refused — loading
them would execute arbitrary code.

Layout map (HF PyTorch linear weights are [out, in]):
  model.embed_tokens.weight [V, D]                 -> embedding [V, D]
  model.layers.i.self_attn.{q,k,v}_proj.weight     -> layer_i/attn/{q,k,v} [D, heads, Dh]   (transposed)
  model.layers.i.self_attn.{q,k,v}_proj.bias       -> layer_i/attn/{q,k,v}_bias [heads, Dh] (Qwen2)
  model.layers.i.self_attn.o_proj.weight [D, H*Dh] -> layer_i/attn/o [H, Dh, D]
  model.layers.i.mlp.{gate,up}_proj.weight [F, D]  -> layer_i/mlp/{gate,up} [D, F]
  model.layers.i.mlp.down_proj.weight [D, F]       -> layer_i/mlp/down [F, D]
  model.layers.i.{input,post_attention}_layernorm  -> layer_i/{attn,mlp}_norm/scale
  model.norm.weight -> final_norm/scale;  lm_head.weight [V, D] -> lm_head [D, V] (absent when tied)
HF's rotary embedding uses the same "rotate half" pairing as star_jax, so no permutation is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from star_jax import sharding
from star_jax.models.config import ModelConfig
from star_jax.models.functional import abstract_params, logical_axes

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class CheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be loaded; the message names the file/tensor/key."""


# ---- config ----

def config_from_hf(hf: dict, source: str = "config.json", dtype: str | None = None) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict; unsupported features raise naming the key."""
  architectures = hf.get("architectures") or []
  if not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
    raise CheckpointError(f"{source}: unsupported architecture {architectures!r}; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
  qwen = architectures[0] == "Qwen2ForCausalLM"
  if hf.get("rope_scaling"):
    raise CheckpointError(f"{source}: rope_scaling={hf['rope_scaling']!r} is not supported (only plain RoPE)")
  rope = hf.get("rope_parameters") or {}  # transformers >= 5 nests rope settings here
  if rope.get("rope_type", "default") != "default":
    raise CheckpointError(f"{source}: rope_parameters.rope_type={rope['rope_type']!r} is not supported "
                          "(only plain RoPE)")
  rope_theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  if hf.get("mlp_bias"):
    raise CheckpointError(f"{source}: mlp_bias=true is not supported")
  if not qwen and hf.get("attention_bias"):
    raise CheckpointError(f"{source}: attention_bias=true (bias on o_proj too) is not supported for Llama")
  if qwen and hf.get("use_sliding_window"):
    raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (SwiGLU uses silu)")
  try:
    heads = hf["num_attention_heads"]
    param_dtype = dtype or _DTYPE_NAMES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), "float32")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, d_ff=hf["intermediate_size"],
        rope_theta=rope_theta, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=qwen, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=param_dtype, param_dtype=param_dtype)
  except KeyError as e:
    raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None


def hf_config_dict(config: ModelConfig, architecture: str, **extra) -> dict:
  """A config.json dict that transformers can load for `architecture`."""
  if architecture not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"architecture must be one of {SUPPORTED_ARCHITECTURES}, got {architecture!r}")
  qwen = architecture == "Qwen2ForCausalLM"
  if config.qkv_bias != qwen:
    raise ValueError(f"{architecture} needs qkv_bias={qwen}, but the config has qkv_bias={config.qkv_bias}")
  out = {
      "architectures": [architecture], "model_type": "qwen2" if qwen else "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
      "head_dim": config.head_dim, "intermediate_size": config.d_ff, "rope_theta": config.rope_theta,
      "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
      "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
      "torch_dtype": config.param_dtype, "max_position_embeddings": 4096,
  }
  if not qwen:
    out.update(attention_bias=False, mlp_bias=False)
  out.update(extra)
  return out


# ---- the name/layout map ----

def _tensor_map(config: ModelConfig) -> Iterator[tuple[str, tuple[str, ...], Callable, Callable]]:
  """(HF name, star_jax param path, hf->ours, ours->hf) for every tensor."""
  d, h, k, dh = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
  identity = lambda w: w  # noqa: E731
  transpose = lambda w: w.T  # noqa: E731

  def proj_in(heads):  # [heads*Dh, D] <-> [D, heads, Dh]
    return (lambda w: w.T.reshape(d, heads, dh)), (lambda w: w.reshape(d, heads * dh).T)

  def bias(heads):  # [heads*Dh] <-> [heads, Dh]
    return (lambda b: b.reshape(heads, dh)), (lambda b: b.reshape(heads * dh))

  yield "model.embed_tokens.weight", ("embedding",), identity, identity
  for i in range(config.n_layers):
    hf, ours = f"model.layers.{i}", f"layer_{i}"
    yield f"{hf}.input_layernorm.weight", (ours, "attn_norm", "scale"), identity, identity
    yield f"{hf}.post_attention_layernorm.weight", (ours, "mlp_norm", "scale"), identity, identity
    for name, heads in (("q", h), ("k", k), ("v", k)):
      yield (f"{hf}.self_attn.{name}_proj.weight", (ours, "attn", name), *proj_in(heads))
      if config.qkv_bias:
        yield (f"{hf}.self_attn.{name}_proj.bias", (ours, "attn", f"{name}_bias"), *bias(heads))
    yield (f"{hf}.self_attn.o_proj.weight", (ours, "attn", "o"),
           lambda w: w.T.reshape(h, dh, d), lambda w: w.reshape(h * dh, d).T)
    for name in ("gate", "up", "down"):
      yield f"{hf}.mlp.{name}_proj.weight", (ours, "mlp", name), transpose, transpose
  yield "model.norm.weight", ("final_norm", "scale"), identity, identity
  if not config.tie_embeddings:
    yield "lm_head.weight", ("lm_head",), transpose, transpose


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ---- loading ----

def _weight_files(path: str) -> dict[str, str]:
  """tensor name -> safetensors file, from the index (sharded) or the single file."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
    return {name: os.path.join(path, file) for name, file in weight_map.items()}
  if os.path.exists(single):
    with safe_open(single, framework="numpy") as f:
      return {name: single for name in f.keys()}
  pickles = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
  if pickles:
    raise CheckpointError(f"{path}: only pickle-based weights ({', '.join(sorted(pickles))}); star_jax refuses "
                          "to unpickle them (that can execute arbitrary code). Convert them to safetensors first.")
  raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_config(path: str, dtype: str | None = None) -> ModelConfig:
  """The ModelConfig of a local Hugging Face model directory's config.json (errors name the file)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path}: not found (expected a local Hugging Face model directory)")
  with open(config_path, encoding="utf-8") as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
  return config_from_hf(hf, config_path, dtype)


def load_hf(path: str, *, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None):
  """(ModelConfig, params) from a local Hugging Face model directory.

  mesh: place each parameter directly in its sharded layout on this mesh (default: the default device).
  dtype: override the parameter dtype (default: the checkpoint's torch_dtype).
  """
  config = read_config(path, dtype)
  files = _weight_files(path)
  expected = jax.tree.map(lambda a: a.shape, abstract_params(config))
  shardings = None
  if mesh is not None:
    shardings = sharding.tree_shardings(logical_axes(config), abstract_params(config), mesh)
  params: dict = {}
  handles: dict[str, object] = {}
  try:
    for hf_name, ours, to_ours, _ in _tensor_map(config):
      if hf_name not in files:
        raise CheckpointError(f"{path}: tensor {hf_name!r} is missing from the checkpoint")
      file = files[hf_name]
      if file not in handles:
        if not os.path.isfile(file):
          raise CheckpointError(f"{file}: not found (named in the safetensors index)")
        handles[file] = safe_open(file, framework="numpy").__enter__()
      try:
        raw = handles[file].get_tensor(hf_name)
      except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
        raise CheckpointError(f"{file}: cannot read tensor {hf_name!r} ({e})") from None
      want = _get(expected, ours)
      try:
        value = np.ascontiguousarray(to_ours(raw)).astype(jnp.dtype(config.param_dtype))
      except ValueError:
        value = None
      if value is None or value.shape != want:
        raise CheckpointError(f"{file}: tensor {hf_name!r} has shape {tuple(raw.shape)}, which does not "
                              f"fit {'/'.join(ours)} of shape {want} for this config.json")
      if shardings is None:
        _set(params, ours, jnp.asarray(value))
      else:
        target = _get(shardings, ours)
        _set(params, ours, jax.make_array_from_callback(value.shape, target, lambda index, v=value: v[index]))
  finally:
    for handle in handles.values():
      handle.__exit__(None, None, None)
  return config, params


# ---- export ----

def save_hf(path: str, config: ModelConfig, params, *, architecture: str | None = None, **config_extra) -> None:
  """Write config.json + model.safetensors that transformers (and load_hf) read back exactly."""
  architecture = architecture or ("Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM")
  os.makedirs(path, exist_ok=True)
  tensors = {}
  host = sharding.to_host(params)
  for hf_name, ours, _, to_hf in _tensor_map(config):
    tensors[hf_name] = np.ascontiguousarray(to_hf(np.asarray(_get(host, ours))))
  if jax.process_index() != 0:
    return
  tmp = os.path.join(path, "model.safetensors.tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(config, architecture, **config_extra), f, indent=2)
