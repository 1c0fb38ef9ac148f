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
import math
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
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtypes load_hf accepts


class CheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be loaded; the message names the file/tensor/key."""


# ---- config ----

_MISSING = object()
_CONFIG_KEYS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
                "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
                "d_ff": "intermediate_size"}


def _positive_int(hf: dict, key: str, source: str, default=_MISSING) -> int:
  """hf[key] as a positive int (not a bool, float or string); `default` when absent or null."""
  value = hf.get(key)
  if value is None:
    if default is _MISSING:
      raise CheckpointError(f"{source}: missing key {key!r}")
    return default
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise CheckpointError(f"{source}: {key} must be a positive integer, got {value!r} ({type(value).__name__})")
  return value


def _positive_float(obj: dict, key: str, source: str, default: float, where: str = "") -> float:
  """obj[key] as a finite positive number (int or float, not a bool or string); `default` when absent/null."""
  value = obj.get(key)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
    raise CheckpointError(f"{source}: {where}{key} must be a finite positive number, got {value!r} "
                          f"({type(value).__name__})")
  return float(value)


def _flag(hf: dict, key: str, source: str) -> bool:
  """hf[key] as a bool (absent or null: False); a string such as "false" is refused, not read as true."""
  value = hf.get(key)
  if value is None:
    return False
  if not isinstance(value, bool):
    raise CheckpointError(f"{source}: {key} must be true or false, got {value!r} ({type(value).__name__})")
  return value


def config_from_hf(hf: dict, source: str = "config.json", dtype: str | None = None) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict; unsupported features and wrongly typed values (a
  string or float where an integer belongs, a list for the whole config) raise CheckpointError naming the key."""
  if not isinstance(hf, dict):
    raise CheckpointError(f"{source}: must be a JSON object, got {type(hf).__name__}")
  architectures = hf.get("architectures") or []
  if (not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str)
      or architectures[0] not in SUPPORTED_ARCHITECTURES):
    raise CheckpointError(f"{source}: unsupported architecture {architectures!r}; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
  qwen = architectures[0] == "Qwen2ForCausalLM"
  if hf.get("rope_scaling"):
    raise CheckpointError(f"{source}: rope_scaling={hf['rope_scaling']!r} is not supported (only plain RoPE)")
  rope = hf.get("rope_parameters") or {}  # transformers >= 5 nests rope settings here
  if not isinstance(rope, dict):
    raise CheckpointError(f"{source}: rope_parameters must be an object, got {type(rope).__name__}")
  if rope.get("rope_type", "default") != "default":
    raise CheckpointError(f"{source}: rope_parameters.rope_type={rope['rope_type']!r} is not supported "
                          "(only plain RoPE)")
  rope_theta = _positive_float(hf, "rope_theta", source, 10_000.0)
  rope_theta = _positive_float(rope, "rope_theta", source, rope_theta, where="rope_parameters.")
  if _flag(hf, "mlp_bias", source):
    raise CheckpointError(f"{source}: mlp_bias=true is not supported")
  if not qwen and _flag(hf, "attention_bias", source):
    raise CheckpointError(f"{source}: attention_bias=true (bias on o_proj too) is not supported for Llama")
  if qwen and _flag(hf, "use_sliding_window", source):
    raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (SwiGLU uses silu)")
  param_dtype = dtype
  if param_dtype is None:
    dtype_key = "torch_dtype" if hf.get("torch_dtype") is not None else "dtype"
    stored = hf.get(dtype_key)
    if stored is not None and stored not in _DTYPE_NAMES:
      raise CheckpointError(f"{source}: {dtype_key}={stored!r} is not a dtype star_jax loads "
                            f"({', '.join(_DTYPE_NAMES)}); quantized checkpoints are not supported")
    param_dtype = _DTYPE_NAMES[stored or "float32"]
  heads = _positive_int(hf, "num_attention_heads", source)
  d_model = _positive_int(hf, "hidden_size", source)
  try:
    return ModelConfig(
        vocab_size=_positive_int(hf, "vocab_size", source), d_model=d_model,
        n_layers=_positive_int(hf, "num_hidden_layers", source), n_heads=heads,
        n_kv_heads=_positive_int(hf, "num_key_value_heads", source, heads),
        head_dim=_positive_int(hf, "head_dim", source, d_model // heads),
        d_ff=_positive_int(hf, "intermediate_size", source),
        rope_theta=rope_theta, norm_eps=_positive_float(hf, "rms_norm_eps", source, 1e-6),
        qkv_bias=qwen, tie_embeddings=_flag(hf, "tie_word_embeddings", source),
        dtype=param_dtype, param_dtype=param_dtype)
  except ValueError as e:  # ModelConfig's own checks (heads divisibility, an odd head_dim, ...)
    if isinstance(e, CheckpointError):
      raise
    message = str(e)
    for ours, key in _CONFIG_KEYS.items():  # name the config.json keys, not ModelConfig's fields
      message = message.replace(f"model.{ours} ", f"{key} ")
    raise CheckpointError(f"{source}: {message}") from None


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

def _tensor_map(config: ModelConfig) -> Iterator[tuple[str, tuple[str, ...], Callable, Callable, tuple[int, ...]]]:
  """(HF name, star_jax param path, hf->ours, ours->hf, HF shape) for every tensor."""
  d, h, k, dh = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
  v, f = config.vocab_size, config.d_ff
  identity = lambda w: w  # noqa: E731
  transpose = lambda w: w.T  # noqa: E731

  def proj_in(heads):  # [heads*Dh, D] <-> [D, heads, Dh]
    return (lambda w: w.T.reshape(d, heads, dh)), (lambda w: w.reshape(d, heads * dh).T)

  def bias(heads):  # [heads*Dh] <-> [heads, Dh]
    return (lambda b: b.reshape(heads, dh)), (lambda b: b.reshape(heads * dh))

  yield "model.embed_tokens.weight", ("embedding",), identity, identity, (v, d)
  for i in range(config.n_layers):
    hf, ours = f"model.layers.{i}", f"layer_{i}"
    yield f"{hf}.input_layernorm.weight", (ours, "attn_norm", "scale"), identity, identity, (d,)
    yield f"{hf}.post_attention_layernorm.weight", (ours, "mlp_norm", "scale"), identity, identity, (d,)
    for name, heads in (("q", h), ("k", k), ("v", k)):
      yield (f"{hf}.self_attn.{name}_proj.weight", (ours, "attn", name), *proj_in(heads), (heads * dh, d))
      if config.qkv_bias:
        yield (f"{hf}.self_attn.{name}_proj.bias", (ours, "attn", f"{name}_bias"), *bias(heads), (heads * dh,))
    yield (f"{hf}.self_attn.o_proj.weight", (ours, "attn", "o"),
           lambda w: w.T.reshape(h, dh, d), lambda w: w.reshape(h * dh, d).T, (d, h * dh))
    for name, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
      yield f"{hf}.mlp.{name}_proj.weight", (ours, "mlp", name), transpose, transpose, shape
  yield "model.norm.weight", ("final_norm", "scale"), identity, identity, (d,)
  if not config.tie_embeddings:
    yield "lm_head.weight", ("lm_head",), transpose, transpose, (v, d)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ---- loading ----

def _read_json_object(file: str) -> dict:
  """A JSON object from `file`, decoded as strict UTF-8; CheckpointError naming the file otherwise."""
  try:
    with open(file, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise CheckpointError(f"{file}: cannot read ({e.strerror or e})") from None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise CheckpointError(f"{file}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{file}: invalid JSON ({e})") from None
  except (RecursionError, ValueError) as e:  # nesting too deep, an integer of > 4300 digits
    raise CheckpointError(f"{file}: unreadable JSON ({type(e).__name__}: {e})") from None
  if not isinstance(data, dict):
    raise CheckpointError(f"{file}: must be a JSON object, got {type(data).__name__}")
  return data


def _inside(model_dir: str, file: str, source: str, name: str) -> str:
  """`file` if it resolves (symlinks followed) inside `model_dir`; CheckpointError naming `source` otherwise.

  One exception, the Hugging Face cache layout: a file of `<repo>/snapshots/<revision>/` may be a symlink
  into `<repo>/blobs/`.
  """
  root, real = os.path.realpath(model_dir), os.path.realpath(file)
  if os.path.commonpath([root, real]) == root and real != root:
    return file
  parent = os.path.dirname(root)
  if os.path.basename(parent) == "snapshots" and os.path.dirname(real) == os.path.join(os.path.dirname(parent), "blobs"):
    return file
  raise CheckpointError(f"{source}: {name!r} resolves to {real}, outside the model directory {root}; shards must "
                        "lie inside it")


def _shard_path(model_dir: str, name, index: str, tensor) -> str:
  """The path of a shard named by the index: a relative path inside the model directory."""
  if not isinstance(tensor, str) or not isinstance(name, str) or not name:
    raise CheckpointError(f"{index}: weight_map must map tensor names to file names, got {tensor!r}: {name!r}")
  parts = name.replace("\\", "/").split("/")
  if os.path.isabs(name) or ".." in parts:
    raise CheckpointError(f"{index}: tensor {tensor!r} names the file {name!r}, outside the model directory; "
                          "shards must lie inside it")
  return _inside(model_dir, os.path.join(model_dir, name), index, name)


def _weight_files(path: str) -> dict[str, str]:
  """tensor name -> safetensors file, from the index (sharded) or the single file; every file inside `path`."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    weight_map = _read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: not a safetensors index (weight_map must be an object of tensor name -> "
                            f"file, got {type(weight_map).__name__})")
    return {tensor: _shard_path(path, file, index, tensor) for tensor, file in weight_map.items()}
  if os.path.exists(single):
    _inside(path, single, single, "model.safetensors")
    return {name: single for name in _open_safetensors(single).keys()}
  pickles = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
  if pickles:
    raise CheckpointError(f"{path}: only pickle-based weights ({', '.join(sorted(pickles))}); star_jax refuses "
                          "to unpickle them (that can execute arbitrary code). Convert them to safetensors first.")
  raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _open_safetensors(file: str):
  """safe_open(file) (numpy), or CheckpointError naming the file (truncated, empty, not safetensors)."""
  try:
    return safe_open(file, framework="numpy")
  except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
    raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def read_config(path: str, dtype: str | None = None) -> ModelConfig:
  """The ModelConfig of a local Hugging Face model directory's config.json (errors name the file)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path}: not found (expected a local Hugging Face model directory)")
  return config_from_hf(_read_json_object(config_path), config_path, dtype)


def _read_tensor(handle, file: str, hf_name: str, hf_shape: tuple[int, ...]) -> np.ndarray:
  """One tensor, checked before it is read: a float dtype (FLOAT_DTYPES) and exactly the expected HF shape."""
  try:
    info = handle.get_slice(hf_name)
    stored_dtype, shape = info.get_dtype(), tuple(info.get_shape())
  except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
    raise CheckpointError(f"{file}: cannot read tensor {hf_name!r} ({e})") from None
  if stored_dtype not in FLOAT_DTYPES:
    raise CheckpointError(f"{file}: tensor {hf_name!r} has dtype {stored_dtype}; star_jax loads only floating-point "
                          f"weights ({', '.join(FLOAT_DTYPES)}): integer or quantized checkpoints are not supported")
  if shape != hf_shape:
    raise CheckpointError(f"{file}: tensor {hf_name!r} has shape {shape}, but this config.json needs {hf_shape}")
  try:
    return handle.get_tensor(hf_name)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{file}: cannot read tensor {hf_name!r} ({e})") from None


def load_hf(path: str, *, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None):
  """(ModelConfig, params) from a local Hugging Face model directory.

  mesh: place each parameter directly in its sharded layout on this mesh (default: the default device).
  dtype: override the parameter dtype (default: the checkpoint's torch_dtype).

  Refused with CheckpointError naming the file and the tensor or key: a config.json that is not a UTF-8
  JSON object or has a wrongly typed value; an index whose weight_map is not an object or names a file
  outside `path`; a truncated or empty safetensors file; a missing tensor; a tensor whose shape is not
  exactly the one config.json implies (no reshape by element count), whose dtype is not floating-point,
  or with any NaN/inf value (also after the cast to the parameter dtype).
  """
  config = read_config(path, dtype)
  files = _weight_files(path)
  want_dtype = jnp.dtype(config.param_dtype)
  shardings = None
  if mesh is not None:
    shardings = sharding.tree_shardings(logical_axes(config), abstract_params(config), mesh)
  params: dict = {}
  handles: dict[str, object] = {}
  try:
    for hf_name, ours, to_ours, _, hf_shape in _tensor_map(config):
      if hf_name not in files:
        raise CheckpointError(f"{path}: tensor {hf_name!r} is missing from the checkpoint")
      file = files[hf_name]
      if file not in handles:
        if not os.path.isfile(file):
          raise CheckpointError(f"{file}: not found (named in the safetensors index)")
        handles[file] = _open_safetensors(file).__enter__()
      raw = _read_tensor(handles[file], file, hf_name, hf_shape)
      with np.errstate(over="ignore"):  # an overflowing cast is reported below, naming the tensor
        value = np.ascontiguousarray(to_ours(raw)).astype(want_dtype)
      bad = value.size - int(np.count_nonzero(np.isfinite(value)))
      if bad:
        stored_bad = raw.size - int(np.count_nonzero(np.isfinite(raw)))
        how = "" if stored_bad else f" after the cast to {config.param_dtype} (the stored values overflow it)"
        raise CheckpointError(f"{file}: tensor {hf_name!r} has {bad} non-finite values (NaN/inf) of {value.size}{how}")
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
  for hf_name, ours, _, to_hf, _ in _tensor_map(config):
    tensors[hf_name] = np.ascontiguousarray(to_hf(np.asarray(_get(host, ours))))
  if jax.process_index() != 0:
    return
  tmp = os.path.join(path, "model.safetensors.tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(config, architecture, **config_extra), f, indent=2)
