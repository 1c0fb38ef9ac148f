"""Hostile Hugging Face model directories (issue 17, item 5): every bad file is refused with CheckpointError
naming the file and the tensor or key, and nothing loads silently wrong.

The model directory is written by star_jax itself (save_hf of a tiny random model, no torch), then damaged one
way per test. D=64, H=4, Dh=8 so that H*Dh=32 != D: a transposed o_proj has the right element count and the
wrong shape, which must be refused (it used to be reshaped silently).
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from star_jax import models
from star_jax.data.hf_tokenizer import HFTokenizer
from star_jax.models import hf
from star_jax.models.hf import CheckpointError

CONFIG = models.ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=96)
Q0 = "model.layers.0.self_attn.q_proj.weight"
O0 = "model.layers.0.self_attn.o_proj.weight"
NORM = "model.norm.weight"


def _hf_shapes(c):
  """Every tensor of a Llama checkpoint with its shape in the HF (PyTorch [out, in]) layout."""
  shapes = {"model.embed_tokens.weight": (c.vocab_size, c.d_model), "model.norm.weight": (c.d_model,),
            "lm_head.weight": (c.vocab_size, c.d_model)}
  for i in range(c.n_layers):
    layer = f"model.layers.{i}"
    shapes.update({
        f"{layer}.input_layernorm.weight": (c.d_model,), f"{layer}.post_attention_layernorm.weight": (c.d_model,),
        f"{layer}.self_attn.q_proj.weight": (c.n_heads * c.head_dim, c.d_model),
        f"{layer}.self_attn.k_proj.weight": (c.n_kv_heads * c.head_dim, c.d_model),
        f"{layer}.self_attn.v_proj.weight": (c.n_kv_heads * c.head_dim, c.d_model),
        f"{layer}.self_attn.o_proj.weight": (c.d_model, c.n_heads * c.head_dim),
        f"{layer}.mlp.gate_proj.weight": (c.d_ff, c.d_model), f"{layer}.mlp.up_proj.weight": (c.d_ff, c.d_model),
        f"{layer}.mlp.down_proj.weight": (c.d_model, c.d_ff)})
  return shapes


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """config.json + model.safetensors of random float32 tensors in HF layout (numpy only: no init, no compile)."""
  path = tmp_path_factory.mktemp("hf_base") / "model"
  path.mkdir()
  rng = np.random.default_rng(0)
  tensors = {name: rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in _hf_shapes(CONFIG).items()}
  save_file(tensors, str(path / "model.safetensors"))
  (path / "config.json").write_text(json.dumps(hf.hf_config_dict(CONFIG, "LlamaForCausalLM")))
  return path


@pytest.fixture
def model_dir(saved, tmp_path):
  """A fresh copy of the saved model to damage."""
  path = tmp_path / "model"
  shutil.copytree(saved, path)
  return path


def _tensors(path):
  return load_file(str(path / "model.safetensors"))


def _write_tensors(path, tensors):
  save_file(tensors, str(path / "model.safetensors"))


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def _refused(path, *patterns, **kwargs) -> str:
  with pytest.raises(CheckpointError) as info:
    models.load_hf(str(path), **kwargs)
  message = str(info.value)
  for pattern in patterns:
    assert re.search(pattern, message), (pattern, message)
  return message


def test_an_intact_directory_loads_exactly(saved, tmp_path):
  config, params = models.load_hf(str(saved))
  assert config == CONFIG
  hf.save_hf(str(tmp_path), config, params)
  again, original = load_file(str(tmp_path / "model.safetensors")), _tensors(saved)
  assert sorted(again) == sorted(original)
  for name in original:
    np.testing.assert_array_equal(again[name], original[name])


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "garbage"])
def test_unreadable_safetensors_file_is_named(model_dir, damage, fault_table):
  file = model_dir / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes({"truncated": data[:len(data) // 2], "zero bytes": b"", "garbage": b"\x00" * 64}[damage])
  message = _refused(model_dir, re.escape(str(file)) + ": not a readable safetensors file")
  fault_table(f"model.safetensors {damage}", "HF model dir", f"CheckpointError: {message[len(str(model_dir)):][:90]}")


@pytest.mark.parametrize("name, stored_shape", [
    (Q0, (32 * 64,)),  # q_proj stored flat: same element count
    (O0, (32, 64)),  # o_proj transposed: [H*Dh, D] instead of [D, H*Dh]
    (O0, (8, 256)),  # o_proj as [8, 256]
])
def test_wrong_shape_with_the_right_element_count_is_refused(model_dir, name, stored_shape, fault_table):
  tensors = _tensors(model_dir)
  assert tensors[name].size == int(np.prod(stored_shape))
  tensors[name] = np.ascontiguousarray(tensors[name].reshape(stored_shape))
  _write_tensors(model_dir, tensors)
  _refused(model_dir, re.escape(str(model_dir / "model.safetensors")), re.escape(repr(name)),
           re.escape(f"has shape {stored_shape}"), re.escape(str(_hf_shapes(CONFIG)[name])))
  fault_table(f"{name.split('.')[-2]} stored as {list(stored_shape)} (right element count)", "model.safetensors",
              "CheckpointError names file, tensor, stored and expected shape")


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.bool_])
def test_integer_tensors_are_refused(model_dir, dtype, fault_table):
  tensors = _tensors(model_dir)
  tensors[NORM] = np.ones(tensors[NORM].shape, dtype)
  _write_tensors(model_dir, tensors)
  _refused(model_dir, re.escape(repr(NORM)), "has dtype", "only floating-point")
  fault_table(f"{np.dtype(dtype).name} tensor", "model.safetensors", "CheckpointError names file, tensor, dtype")


@pytest.mark.parametrize("poison", ["all NaN", "one inf", "one -inf"])
def test_non_finite_tensors_are_refused(model_dir, poison, fault_table):
  tensors = _tensors(model_dir)
  w = tensors[Q0].copy()
  if poison == "all NaN":
    w[:] = np.nan
  else:
    w[3, 5] = np.inf if poison == "one inf" else -np.inf
  tensors[Q0] = w
  _write_tensors(model_dir, tensors)
  count = w.size if poison == "all NaN" else 1
  _refused(model_dir, re.escape(str(model_dir / "model.safetensors")), re.escape(repr(Q0)),
           f"has {count} non-finite values")
  fault_table(f"{poison} tensor", "model.safetensors", "CheckpointError names file, tensor, count")


def test_overflow_on_the_cast_to_the_param_dtype_is_refused(model_dir):
  tensors = _tensors(model_dir)
  tensors[Q0] = np.full(tensors[Q0].shape, 1e6, np.float32)  # finite in float32, inf in float16
  _write_tensors(model_dir, tensors)
  _refused(model_dir, re.escape(repr(Q0)), "after the cast to float16", dtype="float16")


@pytest.mark.parametrize("case, changes, key", [
    ("hidden_size as a string", {"hidden_size": "64"}, "hidden_size"),
    ("2.0 layers", {"num_hidden_layers": 2.0}, "num_hidden_layers"),
    ("bool vocab_size", {"vocab_size": True}, "vocab_size"),
    ("zero heads", {"num_attention_heads": 0}, "num_attention_heads"),
    ("negative intermediate_size", {"intermediate_size": -96}, "intermediate_size"),
    ("tie_word_embeddings as a string", {"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ("rope_theta as a string", {"rope_theta": "10000"}, "rope_theta"),
    ("NaN rms_norm_eps", {"rms_norm_eps": float("nan")}, "rms_norm_eps"),
    ("rope_parameters as a list", {"rope_parameters": [1]}, "rope_parameters"),
    ("architectures as a string", {"architectures": "LlamaForCausalLM"}, "architecture"),
    ("architectures as an object", {"architectures": {"0": "LlamaForCausalLM"}}, "architecture"),
    ("int8 torch_dtype", {"torch_dtype": "int8"}, "torch_dtype"),
    ("heads not dividing kv heads", {"num_key_value_heads": 3}, "num_attention_heads .* num_key_value_heads"),
    ("odd head_dim", {"head_dim": 7}, "head_dim must be even"),
])
def test_wrongly_typed_config_values_are_refused(model_dir, case, changes, key, fault_table):
  _edit_config(model_dir, **changes)
  _refused(model_dir, "^" + re.escape(str(model_dir / "config.json")) + ":", key)
  fault_table(f"config.json: {case}", "config.json", f"CheckpointError names config.json and {key}")


@pytest.mark.parametrize("case, content", [
    ("a JSON list", b"[1, 2]"),
    ("a JSON string", b'"LlamaForCausalLM"'),
    ("not UTF-8", '{"architectures": ["Llama\u00e9"]}'.encode("latin-1")),
    ("UTF-16", json.dumps({"architectures": ["LlamaForCausalLM"]}).encode("utf-16")),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000),
    ("invalid JSON", b"{"),
])
def test_unreadable_config_json_is_refused(model_dir, case, content, fault_table):
  (model_dir / "config.json").write_bytes(content)
  _refused(model_dir, "^" + re.escape(str(model_dir / "config.json")) + ": ")
  fault_table(f"config.json is {case}", "config.json", "CheckpointError names config.json")


def _shard(model_dir, index_map=None, shard_name="model-00001-of-00001.safetensors"):
  """Turn the single file into an index + one shard; `index_map` replaces the index's weight_map."""
  tensors = _tensors(model_dir)
  os.remove(model_dir / "model.safetensors")
  save_file(tensors, str(model_dir / shard_name))
  weight_map = {name: shard_name for name in tensors} if index_map is None else index_map
  (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return tensors


def test_a_sharded_directory_loads(model_dir):
  _shard(model_dir)
  assert models.load_hf(str(model_dir))[0] == CONFIG


@pytest.mark.parametrize("case, weight_map", [
    ("weight_map a list", ["model-00001-of-00001.safetensors"]),
    ("weight_map missing", None),
    ("file name a number", {NORM: 3}),
])
def test_malformed_index_is_refused(model_dir, case, weight_map, fault_table):
  _shard(model_dir)
  index = model_dir / "model.safetensors.index.json"
  index.write_text(json.dumps({} if weight_map is None else {"weight_map": weight_map}))
  _refused(model_dir, "^" + re.escape(str(index)) + ": ")
  fault_table(f"index: {case}", "model.safetensors.index.json", "CheckpointError names the index")


@pytest.mark.parametrize("where", ["../outside", "absolute", "symlink out", "sub/../../outside"])
def test_shards_outside_the_model_directory_are_refused(model_dir, tmp_path, where, fault_table):
  tensors = _shard(model_dir)
  outside = tmp_path / "outside.safetensors"
  save_file(tensors, str(outside))
  name = {"../outside": "../outside.safetensors", "absolute": str(outside), "symlink out": "link.safetensors",
          "sub/../../outside": "sub/../../outside.safetensors"}[where]
  if where == "symlink out":
    os.symlink(outside, model_dir / "link.safetensors")
  index = model_dir / "model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {t: name for t in tensors}}))
  _refused(model_dir, "^" + re.escape(str(index)) + ": ", "outside the model directory")
  fault_table(f"index names a shard outside the dir ({where})", "model.safetensors.index.json",
              "CheckpointError names the index and the file")


def test_single_file_symlinked_outside_is_refused(model_dir, tmp_path):
  outside = tmp_path / "elsewhere.safetensors"
  shutil.move(model_dir / "model.safetensors", outside)
  os.symlink(outside, model_dir / "model.safetensors")
  _refused(model_dir, "outside the model directory")


def test_hugging_face_cache_layout_symlinks_into_blobs_load(saved, tmp_path):
  """<repo>/snapshots/<rev>/* -> <repo>/blobs/<sha>: how huggingface_hub stores downloads; still accepted."""
  repo = tmp_path / "models--x--tiny"
  (repo / "blobs").mkdir(parents=True)
  snapshot = repo / "snapshots" / "abc123"
  snapshot.mkdir(parents=True)
  for i, name in enumerate(["config.json", "model.safetensors"]):
    shutil.copy(saved / name, repo / "blobs" / f"sha{i}")
    os.symlink(os.path.join("..", "..", "blobs", f"sha{i}"), snapshot / name)
  assert models.load_hf(str(snapshot))[0] == CONFIG


def test_tensor_missing_from_its_shard_is_named(model_dir):
  tensors = _shard(model_dir)
  del tensors[NORM]
  save_file(tensors, str(model_dir / "model-00001-of-00001.safetensors"))
  _refused(model_dir, re.escape(repr(NORM)))


# ---- the tokenizer files beside the model ----

@pytest.fixture
def tokenizer_dir(tmp_path):
  from tokenizers import Tokenizer, pre_tokenizers
  from tokenizers import models as tok_models
  tokenizer = Tokenizer(tok_models.WordLevel({"<s>": 0, "</s>": 1, "hi": 2, "[UNK]": 3}, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  return tmp_path


@pytest.mark.parametrize("file, content, pattern", [
    ("tokenizer_config.json", '{"eos_token": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    ("tokenizer_config.json", b"[1]", "must be a JSON object"),
    ("config.json", b'{"eos_token_id": "1"}', "eos_token_id must be a non-negative integer"),
    ("config.json", b'{"bos_token_id": true}', "bos_token_id must be a non-negative integer"),
    ("config.json", b'{"pad_token_id": -1}', "pad_token_id must be a non-negative integer"),
])
def test_bad_tokenizer_side_files_name_the_file(tokenizer_dir, file, content, pattern, fault_table):
  (tokenizer_dir / file).write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(str(tokenizer_dir / file)) + ".*" + pattern):
    HFTokenizer(str(tokenizer_dir))
  fault_table(f"{file}: {pattern.split(' must')[0]}", "tokenizer dir", "ValueError names the file (and key)")


def test_good_tokenizer_side_files_still_load(tokenizer_dir):
  (tokenizer_dir / "config.json").write_text(json.dumps({"eos_token_id": [1, 0], "bos_token_id": 0}))
  tok = HFTokenizer(str(tokenizer_dir))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 1)
