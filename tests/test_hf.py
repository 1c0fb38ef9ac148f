"""Hugging Face import/export: logit and greedy-generation parity with transformers (torch CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: E402  (the [hf] extra; `make test` installs it, so a missing torch fails loudly)
import transformers  # noqa: E402

from star_jax import models, sampling, sharding  # noqa: E402
from star_jax.data import HFTokenizer  # noqa: E402
from star_jax.models import hf  # noqa: E402

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500.0)


def _save_hf_model(path, kind):
  torch.manual_seed(0)
  if kind == "llama":
    config = transformers.LlamaConfig(**TINY, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
  else:
    config = transformers.Qwen2Config(**TINY, tie_word_embeddings=True, use_sliding_window=False)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # random, non-zero biases so the test sees them
      for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
          proj.bias.normal_(0, 0.5)
  model.eval()
  model.save_pretrained(path, safe_serialization=True)
  return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_model(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  return request.param, path, _save_hf_model(path, request.param)


def test_logits_match_transformers(hf_model):
  kind, path, model = hf_model
  config, params = models.load_hf(path)
  assert config.qkv_bias == (kind == "qwen2") and config.tie_embeddings == (kind == "qwen2")
  assert config.n_kv_heads == 2 and config.rope_theta == 500.0
  tokens = np.random.default_rng(0).integers(0, 97, (3, 24))
  with torch.no_grad():
    expected = model(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(models.forward(config, params, jnp.asarray(tokens, jnp.int32)))
  assert np.max(np.abs(got - expected)) <= 1e-4


def test_greedy_generation_matches_transformers(hf_model):
  _, path, model = hf_model
  config, params = models.load_hf(path)
  prompts = [[5, 17, 33, 2, 8], [60, 1, 9]]
  tokens, lengths = sampling.left_pad(prompts, pad_id=0, multiple=8)
  out = sampling.sample(config, params, tokens, lengths, jax.random.key(0),
                        cfg=sampling.SamplingConfig(max_new_tokens=12), eos_id=-1, pad_id=0)
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      reference = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
    assert list(np.asarray(out.tokens_BxN[row])) == reference[0, len(prompt):].tolist()


def test_export_round_trip_is_exact_and_loadable_by_transformers(hf_model, tmp_path):
  kind, path, model = hf_model
  config, params = models.load_hf(path)
  hf.save_hf(str(tmp_path), config, params)
  config2, params2 = models.load_hf(str(tmp_path))
  assert config2 == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  tokens = torch.tensor([[3, 4, 5, 6]])
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(tokens).logits.numpy(), model(tokens).logits.numpy(), atol=1e-6)


def test_sharded_checkpoint_loads_into_a_mesh(hf_model, tmp_path):
  _, path, _ = hf_model
  config, params = models.load_hf(path)
  # re-save as two shards with an index, as large checkpoints are
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(path, "model.safetensors"))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for file, shard_names in shards.items():
    save_file({n: tensors[n] for n in shard_names}, str(tmp_path / file))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {n: file for file, shard_names in shards.items() for n in shard_names}}))
  (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
  mesh = sharding.make_mesh((("data", 1), ("fsdp", 4), ("tensor", 2)), jax.devices()[:8])
  config2, sharded = models.load_hf(str(tmp_path), mesh=mesh)
  q = sharded["layer_0"]["attn"]["q"]  # [D=64, H=4, Dh=16] split fsdp x tensor
  assert q.addressable_shards[0].data.shape == (16, 2, 16)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_checkpoints_name_the_problem(hf_model, tmp_path):
  _, path, _ = hf_model
  with pytest.raises(hf.CheckpointError, match="config.json: not found"):
    models.load_hf(str(tmp_path))
  config = json.load(open(os.path.join(path, "config.json")))
  (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(hf.CheckpointError, match="unsupported architecture"):
    models.load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
  with pytest.raises(hf.CheckpointError, match="refuses"):
    models.load_hf(str(tmp_path))
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(path, "model.safetensors"))
  missing = dict(tensors)
  del missing["model.norm.weight"]
  save_file(missing, str(tmp_path / "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match="'model.norm.weight' is missing"):
    models.load_hf(str(tmp_path))
  wrong = dict(tensors, **{"model.layers.0.mlp.up_proj.weight": np.zeros((5, 64), np.float32)})
  save_file(wrong, str(tmp_path / "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match=r"up_proj.weight' has shape \(5, 64\)"):
    models.load_hf(str(tmp_path))


def test_tokenizer_json_round_trip(tmp_path):
  from tokenizers import Tokenizer, pre_tokenizers
  from tokenizers import models as tok_models
  vocab = {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "[UNK]": 4}
  tokenizer = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(["<s>", "</s>"])
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
  tok = HFTokenizer(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 1, 5)
  ids = tok.encode("hello world", add_bos=True, add_eos=True)
  assert ids == [0, 2, 3, 1]
  assert tok.decode(ids) == "hello world"
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    HFTokenizer(str(tmp_path / "nowhere"))
