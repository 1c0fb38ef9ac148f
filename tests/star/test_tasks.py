"""The STaR loop on tasks other than arithmetic: configs with a Hugging Face checkpoint, few-shot
exemplars, stop strings, generation/rationalization records, per-group evaluation, and the whole loop on a
tiny GSM8K fixture with a tiny Hugging Face checkpoint (save_hf + a tokenizer.json trained here)."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import star_arithmetic, star_commonsense_qa, star_gsm8k
from star_jax import evaluate, io, models, star, train
from star_jax.data import CharTokenizer, HFTokenizer, gsm8k
from star_jax.data.commonsense_qa import CommonsenseQaTask
from star_jax.data.gsm8k import Gsm8kTask
from star_jax.data.tasks import Example, cut_at_stop
from star_jax.star import data as sd
from star_jax.star import tasks as star_tasks
from star_jax.star.config import star_experiment_from_config

GSM8K = Gsm8kTask()
CSQA = CommonsenseQaTask()

# (question, solution): the first is the few-shot exemplar; the answers' parity drives the oracle below.
TRAIN = [("Tom has 2 apples and buys 3 more. How many?", "2+3 = <<2+3=5>>5.\n#### 5"),
         ("Ann has 4 pens and gets 4 more. How many?", "4+4 = <<4+4=8>>8.\n#### 8"),
         ("A box holds 2 rows of 3 eggs. How many eggs?", "2*3 = <<2*3=6>>6.\n#### 6"),
         ("Bo had 9 cards and lost 2. How many are left?", "9-2 = <<9-2=7>>7.\n#### 7"),
         ("Cy reads 3 pages a day for 3 days. How many pages?", "3*3 = <<3*3=9>>9.\n#### 9"),
         ("Di splits 8 nuts between 2 jars. How many per jar?", "8/2 = <<8/2=4>>4.\n#### 4"),
         ("Ed buys 6 cups and 6 plates. How many items?", "6+6 = <<6+6=12>>12.\n#### 12"),
         ("Fay has 5 coins and spends 2. How many are left?", "5-2 = <<5-2=3>>3.\n#### 3")]
TEST = [("Gus has 1 cat and gets 1 more. How many cats?", "1+1 = <<1+1=2>>2.\n#### 2"),
        ("Hal has 7 hats and 2 caps. How many?", "7+2 = <<7+2=9>>9.\n#### 9")]
VOCAB = 320


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
  return str(path)


def _write_tiny_hf_checkpoint(path, texts):
  """A byte-level BPE tokenizer.json trained on `texts` and a random 2-layer Llama in HF format."""
  from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
  from tokenizers import models as tok_models
  tokenizer = Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=VOCAB, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  os.makedirs(path, exist_ok=True)
  tokenizer.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)
  config = models.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
  rng = np.random.default_rng(0)  # (numpy: flax's eager init takes ~10x longer on a loaded CPU)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: (np.ones(a.shape, np.float32) if "scale" in jax.tree_util.keystr(path)
                       else rng.normal(0, 0.2, a.shape).astype(np.float32)), models.abstract_params(config))
  models.save_hf(path, config, params, architecture="LlamaForCausalLM")
  return params


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("gsm8k")
  texts = [f"Q: {q}\nA: {a}\n\n" for q, a in TRAIN + TEST] + ["(CORRECT) Answer Choices: Therefore, the answer is"]
  params = _write_tiny_hf_checkpoint(str(root / "model"), texts)
  return {"train": _write_jsonl(root / "train.jsonl", TRAIN), "test": _write_jsonl(root / "test.jsonl", TEST),
          "model": str(root / "model"), "params": params, "data_dir": str(root / "tfds")}


def gsm8k_config(files, **star_overrides):
  c = star_gsm8k.get_config("tiny")
  c.model.hf_path, c.data.train_path, c.data.test_path = files["model"], files["train"], files["test"]
  c.data.data_dir = files["data_dir"]
  c.star.growth = 1.0  # one train-step compilation for both iterations
  for k, v in star_overrides.items():
    c.star[k] = v
  return star_experiment_from_config(c)


# ---- configs ----

def test_hf_path_config_takes_the_architecture_from_the_checkpoint(files):
  cfg = gsm8k_config(files)
  assert cfg.hf_path == files["model"] and cfg.data.task == "gsm8k"
  assert (cfg.model.vocab_size, cfg.model.d_model, cfg.model.n_layers, cfg.model.n_kv_heads) == (VOCAB, 32, 2, 2)
  assert (cfg.model.dtype, cfg.model.param_dtype) == ("float32", "float32")  # the tiny variant's dtypes
  c = star_gsm8k.get_config("tiny")
  c.model.hf_path, c.data.train_path = files["model"], files["train"]
  c.model.d_model = 64
  with pytest.raises(ValueError, match="config.model.d_model cannot be set with config.model.hf_path"):
    star_experiment_from_config(c)
  c = star_gsm8k.get_config("tiny")
  c.model.hf_path, c.data.train_path, c.model.dtype = files["model"], files["train"], "float64"
  with pytest.raises(ValueError, match="config.model.dtype must be float32, bfloat16 or float16"):
    star_experiment_from_config(c)


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.model, "hf_path", ""), "config.model.hf_path is required for the gsm8k task"),
    (lambda c: setattr(c.data, "train_path", ""), "config.data.train_path is required for the gsm8k task"),
    (lambda c: setattr(c.data, "validation_path", "x.jsonl"), "config.data.validation_path is not read by the gsm8k"),
    (lambda c: setattr(c.eval, "split", "validation"), "config.eval.split is not a split of the gsm8k task"),
    (lambda c: setattr(c.data, "task", "gsm9k"), "config.data.task must be one of"),
    (lambda c: setattr(c.star, "num_shots", -1), "config.star.num_shots must be >= 0"),
    (lambda c: setattr(c.model, "hf_path", "/nowhere"), "config.model.hf_path: /nowhere/config.json: not found"),
])
def test_pretrained_config_errors_name_the_key(files, change, message):
  c = star_gsm8k.get_config("tiny")
  c.model.hf_path, c.data.train_path = files["model"], files["train"]
  change(c)
  with pytest.raises(ValueError, match=message):
    star_experiment_from_config(c)


def test_arithmetic_config_rules():
  c = star_arithmetic.get_config("tiny")
  c.star.num_shots = 1
  with pytest.raises(ValueError, match="must be 0 for arithmetic"):
    star_experiment_from_config(c)
  c = star_arithmetic.get_config("tiny")
  c.data.train_path = "train.jsonl"
  with pytest.raises(ValueError, match="config.data.train_path is not read by the arithmetic task"):
    star_experiment_from_config(c)
  c = star_arithmetic.get_config("tiny")
  c.star.seed_steps = 0  # no checkpoint to start from: the base model must be trained
  with pytest.raises(ValueError, match="config.star.seed_steps must be > 0 to train the base model"):
    star_experiment_from_config(c)


def test_seed_steps_may_be_zero_with_a_checkpoint(files):
  assert gsm8k_config(files, seed_steps=0).star.seed_steps == 0


def test_commonsense_qa_config_validates(files):
  c = star_commonsense_qa.get_config("tiny")
  c.model.hf_path, c.data.train_path, c.data.few_shot_path = files["model"], files["train"], files["train"]
  cfg = star_experiment_from_config(c)
  assert cfg.eval.split == "validation" and cfg.star.num_shots == 1


# ---- stop strings ----

def test_cut_at_stop():
  assert cut_at_stop("a\n\nb\n\nc", ("\n\n",)) == "a\n\n"
  assert cut_at_stop("abc", ("\n",)) == "abc"
  assert cut_at_stop("x#y\nz", ("\n", "#")) == "x#"  # the earliest stop string wins
  assert cut_at_stop("a\nb", ()) == "a\nb"


def test_stop_sequences_are_the_strings_own_tokens(files):
  assert star_tasks.stop_sequences(CharTokenizer(), ("\n\n", "\n")) == ((4, 4), (4,))
  tok = HFTokenizer(files["model"])
  (seq,) = star_tasks.stop_sequences(tok, GSM8K.stop_strings)
  assert tok.decode(list(seq)) == "\n\n"
  assert star_tasks.stop_sequences(tok, ()) == ()


# ---- generation records ----

def _question_of(prompt):
  """(question, hinted) of the last 'Q: ...\\nA:' block of a GSM8K prompt."""
  line = prompt.rsplit("Q: ", 1)[1].split("\nA:")[0]
  return (line.rsplit(" (", 1)[0], True) if line.endswith(")") else (line, False)


def _examples():
  return [gsm8k.example_from_record(gsm8k.Record("t.jsonl", i + 1, {"question": q, "answer": a}))
          for i, (q, a) in enumerate(TRAIN)]


def test_generation_records_judge_cut_trim_and_drop_prompt_extras():
  examples = _examples()
  exemplar, questions = examples[0], examples[1:4]
  asked, caps = [], []
  texts = {questions[0].question: " 4+4 = 8.\n#### 8\n\nQ: junk\nA: #### 9\n",  # right, junk after the stop
           questions[1].question: " 2*3 = 5.\n#### 5\n",  # wrong
           questions[2].question: " 9-2 = 7.\nso\n\n#### 7\n"}  # the answer comes after the stop: none

  def generate(prompts, max_new_tokens, rng):
    asked.extend(prompts)
    caps.append(max_new_tokens)
    return [texts[_question_of(p)[0]] for p in prompts]

  records = sd.generate_task_records(GSM8K, questions, generate, jax.random.key(0), hint=False, cap=lambda g: 40,
                                     exemplars=[exemplar])
  assert asked == [GSM8K.prompt(exemplar) + GSM8K.target(exemplar) + "\n" + GSM8K.prompt(q) for q in questions]
  assert caps == [40]  # one group (0)
  assert [r["correct"] for r in records] == [True, False, False]
  assert [r["predicted"] for r in records] == ["8", "5", None]
  assert records[0] == {"group": 0, "example": questions[0].to_json(), "prompt": f"Q: {questions[0].question}\nA:",
                        "target": " 4+4 = 8.\n#### 8\n", "predicted": "8", "correct": True, "source": "generated"}
  assert sd.training_examples(records) == [{"prompt": GSM8K.prompt(questions[0]), "target": " 4+4 = 8.\n#### 8\n"}]
  assert sd.failed_examples(GSM8K, records) == questions[1:]  # round trip through the saved record
  assert sd.kept_by_group(records, [0]) == {0: 1}

  asked.clear()
  hinted = sd.generate_task_records(GSM8K, questions[1:], generate, jax.random.key(0), hint=True,
                                    cap=lambda g: 40, exemplars=[exemplar])
  assert asked[0] == GSM8K.hinted_prompt(exemplar) + GSM8K.target(exemplar) + "\n" + "Q: " + \
      questions[1].question + " (6)\nA:"  # hinted exemplars, hinted question
  assert all(r["prompt"] == GSM8K.prompt(q) and r["source"] == "rationalized" for r, q in zip(hinted, questions[1:]))


def test_commonsense_qa_rationalization_saves_without_the_hint():
  q = Example(question="Where do grapes go?", answer="B", choices=(("A", "mouth"), ("B", "cart")), id="q1")
  asked = []

  def generate(prompts, max_new_tokens, rng):
    asked.extend(prompts)
    return [" Carts carry food. Therefore, the answer is cart (b).\nQ: more"]

  (record,) = sd.generate_task_records(CSQA, [q], generate, jax.random.key(0), hint=True, cap=lambda g: 10)
  assert asked == ["Q: Where do grapes go?\nAnswer Choices:\n(a) mouth\n(b) cart (CORRECT)\nA:"]
  assert record["prompt"] == "Q: Where do grapes go?\nAnswer Choices:\n(a) mouth\n(b) cart\nA:"
  assert record["target"] == " Carts carry food. Therefore, the answer is cart (b).\n" and record["correct"]


def test_task_accuracy_per_group(monkeypatch):
  a = [Example(question=f"q{i}", answer=str(i), group=i % 2, id=str(i)) for i in range(5)]
  seen = []

  def fake_generate_texts(model_config, params, tokenizer, prompts, **kwargs):
    seen.append((prompts, kwargs["max_new_tokens"], kwargs["sampling_config"].stop_sequences))
    # q4's answer comes after the stop string: cut there, it is no answer
    return [f" ok\n#### {p.split('Q: q')[-1].split(chr(10))[0]}\n" if "q4" not in p else " \n\n#### 4"
            for p in prompts]

  monkeypatch.setattr(evaluate, "generate_texts", fake_generate_texts)
  exemplar = Example(question="e", answer="1", rationale="r", id="e")
  acc = evaluate.task_accuracy(None, None, None, GSM8K, {0: a[0::2], 1: a[1::2]}, mesh=None, batch_size=8,
                               max_new_tokens=30, exemplars=[exemplar], stop_sequences=((7, 7),))
  assert acc == {"acc_group0": 2 / 3, "acc_group1": 1.0, "acc_overall": 4 / 5}
  assert seen[0][0][0] == "Q: e\nA: r\n#### 1\n\nQ: q0\nA:" and seen[0][1:] == (30, ((7, 7),))


# ---- data setup ----

def test_gsm8k_exemplars_come_out_of_d(files, tmp_path):
  cfg = gsm8k_config(files, num_shots=2)
  data = star_tasks.load_task_data(cfg, str(tmp_path))
  assert [e.question for e in data.exemplars] == [q for q, _ in TRAIN[:2]]
  assert [e.question for e in data.questions] == [q for q, _ in TRAIN[2:]]
  assert list(data.tests) == [0] and [e.answer for e in data.tests[0]] == ["2", "9"]


def test_commonsense_qa_exemplars_and_validation_split(files, tmp_path):
  def row(i, key="A", **extra):
    return json.dumps({"id": f"c{i}", "answerKey": key, "question": {"stem": f"Q{i}?", "choices": [
        {"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]}, **extra}) + "\n"
  (tmp_path / "train.jsonl").write_text("".join(row(i) for i in range(3)))
  (tmp_path / "dev.jsonl").write_text(row(9, "B"))
  (tmp_path / "shots.jsonl").write_text(row(7, rationale="Yes is right.") + row(8, rationale="So."))
  c = star_commonsense_qa.get_config("tiny")
  c.model.hf_path, c.data.data_dir = files["model"], str(tmp_path / "tfds")
  c.data.train_path, c.data.validation_path = str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl")
  c.data.few_shot_path = str(tmp_path / "shots.jsonl")
  data = star_tasks.load_task_data(star_experiment_from_config(c), str(tmp_path))
  assert [e.id for e in data.exemplars] == ["c7"] and data.exemplars[0].rationale == "Yes is right."
  assert [e.id for e in data.questions] == ["c0", "c1", "c2"]  # D keeps every train question
  assert [e.id for e in data.tests[0]] == ["c9"]
  c.star.num_shots = 3
  with pytest.raises(ValueError, match="ask for 3 few-shot exemplars, but the few_shot split"):
    star_tasks.load_task_data(star_experiment_from_config(c), str(tmp_path))


# ---- the loop end to end: tiny GSM8K, tiny Hugging Face checkpoint ----

def gsm8k_oracle(params):
  """Stands in for the model: the gold solution when the answer is even; when hinted, also for odd answers
  except 7; otherwise a wrong one. Everything after a blank line is junk that must never be saved."""
  del params
  solutions = {e.question: e for e in _examples() + [
      gsm8k.example_from_record(gsm8k.Record("test.jsonl", 1, {"question": q, "answer": a})) for q, a in TEST]}

  def generate(prompts, max_new_tokens, rng):
    assert max_new_tokens == 32  # star.max_new_tokens of the tiny config: the prompts leave room
    out = []
    for prompt in prompts:
      question, hinted = _question_of(prompt)
      e = solutions[question]
      value = int(e.answer)
      ok = value % 2 == 0 or (hinted and value != 7)
      out.append((GSM8K.target(e) if ok else f" Maybe {value + 1}.\n#### {value + 1}\n") + "\nQ: junk\nA: #### 1\n")
    return out
  return generate


@pytest.fixture(scope="module")
def gsm8k_run(files, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("star_gsm8k"))
  cfg = gsm8k_config(files)
  base = star.base_params(cfg, workdir)
  records = star.run(cfg, workdir, base, generator=gsm8k_oracle)
  return {"cfg": cfg, "workdir": workdir, "base": base, "records": records}


@pytest.mark.e2e
def test_base_params_are_the_checkpoint(files, gsm8k_run):
  for x, y in zip(jax.tree.leaves(jax.device_get(gsm8k_run["base"])), jax.tree.leaves(files["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="the gsm8k task has no seed-trained base model"):
    star.make_base_model(gsm8k_run["cfg"], gsm8k_run["workdir"])


@pytest.mark.e2e
def test_gsm8k_loop_records_files_and_report(gsm8k_run):
  records, workdir, cfg = gsm8k_run["records"], gsm8k_run["workdir"], gsm8k_run["cfg"]
  assert [r["iteration"] for r in records] == [0, 1, 2]
  for r in records[1:]:
    n = r["iteration"]
    generated = io.read_jsonl(os.path.join(workdir, f"iter_{n}", "generated.jsonl"))
    rationalized = io.read_jsonl(os.path.join(workdir, f"iter_{n}", "rationalized.jsonl"))
    # D = the 7 train questions after the exemplar; kept: answers 8, 6, 4, 12; rationalized: 9, 3 (not 7)
    assert r["questions"] == len(generated) == 7 and TRAIN[0][0] not in {g["example"]["question"] for g in generated}
    assert [g["predicted"] for g in generated if g["correct"]] == ["8", "6", "4", "12"]
    assert (r["kept_generated"], r["kept_rationalized"], r["train_examples"]) == (4, 2, 6)
    assert r["kept_generated_group0"] == 4 and r["kept_rationalized_group0"] == 2
    assert [g["predicted"] for g in rationalized] == ["8", "9", "3"]  # hinted 7: still wrong
    for g in generated + rationalized:
      e = Example.from_json(g["example"])
      assert g["prompt"] == f"Q: {e.question}\nA:"  # no exemplar, no hint
      assert "junk" not in g["target"] and g["target"].endswith(f"#### {g['predicted']}\n")
    assert r["train_steps"] == cfg.star.base_steps and r["train_loss"] is not None
    assert set(r) >= {"acc_overall", "acc_group0", "seconds_train", "seconds_eval"} and 0 <= r["acc_overall"] <= 1
  assert io.read_jsonl(os.path.join(workdir, "star_metrics.jsonl")) == records
  report = open(os.path.join(workdir, "star_report.md"), encoding="utf-8").read()
  assert report.startswith("# STaR report: gsm8k") and "1-shot generation prompts" in report
  assert [row.split("|")[1].strip() for row in report.split("\n\n")[2].splitlines()[2:]] == ["0", "1", "2"]
  assert os.path.getsize(os.path.join(workdir, "star_accuracy.png")) > 1000


@pytest.mark.e2e
def test_gsm8k_loop_fine_tunes_from_the_checkpoint_and_resumes(gsm8k_run):
  cfg, workdir = gsm8k_run["cfg"], gsm8k_run["workdir"]
  m1 = jax.tree.leaves(jax.device_get(star.load_iteration_params(cfg, workdir, 1)))
  assert any(not np.array_equal(x, y) for x, y in zip(m1, jax.tree.leaves(jax.device_get(gsm8k_run["base"]))))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "fine_tune", None)  # everything exists: a re-run only reads it back
    again = star.run(cfg, workdir, gsm8k_run["base"], generator=gsm8k_oracle)
  strip = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}  # noqa: E731
  assert [strip(r) for r in again] == [strip(r) for r in gsm8k_run["records"]]


@pytest.mark.e2e
def test_gsm8k_loop_with_the_sampler(files, gsm8k_run, tmp_path):
  """The real KV-cache sampler with the Hugging Face tokenizer, few-shot prompts and the stop sequence."""
  cfg = gsm8k_config(files, iterations=1)
  records = star.run(cfg, str(tmp_path), gsm8k_run["base"])
  generated = io.read_jsonl(os.path.join(tmp_path, "iter_1", "generated.jsonl"))
  assert len(generated) == records[1]["questions"] == 7
  for g in generated:
    e = Example.from_json(g["example"])
    assert g["prompt"] == f"Q: {e.question}\nA:"
    assert g["target"].find("\n\n") in (-1, len(g["target"]) - 2)  # cut at the stop string
    assert g["correct"] == GSM8K.is_correct(e, g["target"])
  assert records[1]["train_steps"] == (0 if records[1]["train_examples"] == 0 else cfg.star.base_steps)
