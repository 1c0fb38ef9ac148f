"""Process supervision maths: segmentation, label placement, exact and Monte-Carlo labels, aggregation,
best-of-N estimators and dense process rewards, against hand-computed values and brute force."""

import itertools
import math

import jax
import numpy as np
import pytest

from star_jax.data import CharTokenizer, arithmetic, verifiers
from star_jax.data.arithmetic import Problem
from star_jax.data.tasks import get_task
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm
from tests import toy_task

TOK = CharTokenizer()


# ---- segmentation and label placement ----

def test_split_steps_offsets_and_empty_pieces():
  text = "ab\n\n  \ncd\nef"
  steps = prm.split_steps(text)
  assert [(s.text, s.start, s.end) for s in steps] == [("ab", 0, 2), ("cd", 7, 9), ("ef", 10, 12)]
  assert [s.text for s in prm.split_steps("x || y ||", delimiter=" || ")] == ["x", "y ||"]
  assert prm.split_steps("no tag here", start_after="<scratch>") == []
  with pytest.raises(ValueError, match="delimiter"):
    prm.split_steps("x", delimiter="")


def test_split_steps_matches_the_arithmetic_verifier():
  p = Problem(553, 895)
  good = arithmetic.target_text(p)
  bad = good.replace("4 8 C: 1", "4 9 C: 1") + "junk line\n"
  for text in (good, bad, "<scratch> first\n\nsecond", "nothing"):
    steps = prm.split_steps(text, "\n", start_after=arithmetic.SCRATCH_OPEN)
    assert [s.end for s in steps] == verifiers.step_end_offsets(text)
    assert [s.text for s in steps] == [c.text for c in verifiers.check_steps(p, text)]


def test_labels_sit_only_at_step_end_tokens():
  p = Problem(553, 895)
  prompt, text = arithmetic.prompt_text(p), arithmetic.target_text(p)
  steps = prm.split_steps(text, "\n", start_after=arithmetic.SCRATCH_OPEN)
  labels = [1.0, 0.0, None, 1.0, 0.0, 1.0, 0.0]  # one unlabelled step
  ex = prm.encode_labelled_text(TOK, prompt, text, [s.end for s in steps], labels, outcome=0.0)
  offset = 1 + len(prompt)  # BOS + prompt
  expected_positions = [offset + s.end for s, y in zip(steps, labels) if y is not None]
  assert np.flatnonzero(ex["step_mask"]).tolist() == expected_positions
  assert ex["step_targets"][expected_positions].tolist() == [y for y in labels if y is not None]
  assert np.all(ex["step_targets"][ex["step_mask"] == 0] == 0)
  assert all(TOK.decode([t]) == "\n" for t in ex["inputs"][ex["step_mask"] > 0])  # the closing newline
  # inputs / targets / loss_mask agree with the LM pipeline's encoding of the same example
  from star_jax.data.pipeline import encode_example
  lm = encode_example(TOK, prompt, text)
  for key in ("inputs", "targets", "loss_mask"):
    np.testing.assert_array_equal(ex[key], lm[key])
  # the ORM label covers every text token, with the outcome as its target
  assert ex["orm_mask"].sum() == len(text) and ex["orm_mask"][:offset].sum() == 0
  assert np.all(ex["orm_targets"] == 0)


def test_unterminated_last_step_and_step_lists():
  ex = prm.encode_labelled_text(TOK, "Q:", "a\nbc", [1, 4], [1.0, 0.0], outcome=1.0, orm_all_tokens=False)
  assert TOK.decode(ex["inputs"]) == "Q:a\nbc"
  assert np.flatnonzero(ex["step_mask"]).tolist() == [4, 6]  # the '\n' and the last 'c'
  assert np.flatnonzero(ex["orm_mask"]).tolist() == [6] and ex["orm_targets"][6] == 1.0
  listed = prm.encode_steps(TOK, "Q:", ["a", "bc"], [2, 0])  # class ids for a rating head
  assert TOK.decode(listed["inputs"]) == "Q:a\nbc\n"
  assert np.flatnonzero(listed["step_mask"]).tolist() == [4, 7]
  assert listed["step_targets"][[4, 7]].tolist() == [2.0, 0.0]
  with pytest.raises(ValueError, match="increase"):
    prm.encode_labelled_text(TOK, "Q:", "ab", [1, 1], [1.0, 1.0])
  with pytest.raises(ValueError, match="step targets"):
    prm.encode_labelled_text(TOK, "Q:", "ab", [1], [])


# ---- labels ----

def test_exact_arithmetic_labels_are_prefix_correctness():
  p = Problem(553, 895)
  good = arithmetic.target_text(p)
  assert prm.arithmetic_step_labels(p, good) == [1.0] * 7
  # line 2 wrong partial sum; line 3 right again locally, but the prefix is already wrong
  lines = good.split("\n")
  lines[3] = "5 + 8 , 4 9 C: 1"
  bad = "\n".join(lines)
  assert [c.correct for c in verifiers.check_steps(p, bad)][:4] == [True, True, False, True]
  assert prm.arithmetic_step_labels(p, bad) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
  assert prm.prefix_correct_labels([]) == []


def test_monte_carlo_labels_with_a_scripted_completer():
  """Prefix k of solution i succeeds in rollout j iff (i + k + j) % 3 == 0 (scripted by the completer)."""
  prompts = ["P0|", "P1|"]
  texts = ["s0\ns1\n", "t0\nt1\nt2\n"]
  prefixes = [prm.step_prefixes(t, prm.split_steps(t)) for t in texts]
  assert prefixes[1] == ["t0\n", "t0\nt1\n", "t0\nt1\nt2\n"]
  seen = []

  def complete(contexts, n, rng):  # n rollouts of each context, context-major
    del rng
    seen.extend(contexts)
    return ["WIN" if (int(c[1]) + c.count("\n") - 1 + j) % 3 == 0 else "LOSE" for c in contexts for j in range(n)]

  verify = [lambda s: s.endswith("WIN")] * 2
  outcomes = prm.rollout_outcomes(prompts, prefixes, verify, complete, 3, jax.random.key(0))
  assert seen == ["P0|s0\n", "P0|s0\ns1\n", "P1|t0\n", "P1|t0\nt1\n", "P1|t0\nt1\nt2\n"]  # each prefix once
  assert [o.shape for o in outcomes] == [(2, 3), (3, 3)]
  for i, o in enumerate(outcomes):
    for k in range(o.shape[0]):
      assert o[k].tolist() == [(i + k + j) % 3 == 0 for j in range(3)]
  hard, soft = prm.mc_labels(outcomes[0], n=1)
  assert hard.tolist() == [1.0, 0.0] and soft.tolist() == [1.0, 0.0]
  hard, soft = prm.mc_labels(outcomes[0])
  assert hard.tolist() == [1.0, 1.0] and np.allclose(soft, [1 / 3, 1 / 3])


# ---- aggregation ----

def test_aggregations_hand_computed():
  probs = np.asarray([[0.9, 0.5, 0.8], [0.3, 0.6, 0.0], [0.7, 0.7, 0.7]], np.float32)
  mask = np.asarray([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
  np.testing.assert_allclose(prm.aggregate("product", probs, mask), [0.36, 0.18, 0.0], rtol=1e-6)
  np.testing.assert_allclose(prm.aggregate("min", probs, mask), [0.5, 0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(prm.aggregate("last", probs, mask), [0.8, 0.6, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="product"):
    prm.aggregate("mean", probs, mask)
  padded, pmask = prm.pad_steps([[0.9, 0.5, 0.8], [0.3, 0.6], []])
  np.testing.assert_allclose(prm.aggregate("product", padded, pmask), [0.36, 0.18, 0.0], rtol=1e-6)


def test_three_class_neutral_counts_as_positive():
  from star_jax.models.heads import step_good_probability
  logits = np.log(np.asarray([[[0.2, 0.3, 0.5]]], np.float32))
  assert np.isclose(float(step_good_probability(logits)[0, 0]), 0.8)
  assert np.isclose(float(step_good_probability(logits, neutral_positive=False)[0, 0]), 0.5)


# ---- best-of-N ----

def _brute_force_best_of_n(scores, correct, n):
  accs = []
  for s, c in zip(scores, correct):
    picks = [c[min(sub, key=lambda i: (-s[i], i))] for sub in itertools.combinations(range(len(s)), n)]
    accs.append(np.mean(picks))
  return float(np.mean(accs))


def test_best_of_n_is_exact_over_subsets_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(5, 7)).astype(float)  # many ties
  correct = rng.random((5, 7)) < 0.5
  for n in range(1, 8):
    assert math.isclose(prm.best_of_n_accuracy(scores, correct, n), _brute_force_best_of_n(scores, correct, n),
                        rel_tol=1e-12)
  # hand-computed: K = 3, the best-scored sample is wrong, the second right
  s, c = np.asarray([[0.9, 0.5, 0.1]]), np.asarray([[0, 1, 0]])
  assert math.isclose(prm.best_of_n_accuracy(s, c, 2), 1 / 3)  # {1,2} only
  assert math.isclose(prm.best_of_n_accuracy(s, c, 1), 1 / 3)


def test_pass_at_n_hand_computed():
  correct = np.asarray([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
  # 1 - C(3,2)/C(4,2) = 1/2 ; 1 - C(2,2)/C(4,2) = 5/6 ; 0
  assert math.isclose(prm.pass_at_n(correct, 2), (0.5 + 5 / 6 + 0) / 3)
  assert math.isclose(prm.pass_at_n(correct, 4), 2 / 3)


def test_majority_vote_hand_computed():
  answers = [[5, 5, 3, None], [1, 2, None, None], [None, None, None, None], [7, 7, 7, 8]]
  truths = [5, 2, 0, 8]
  # full set: 5 wins (right); 1 vs 2 tie -> right half the time; no answer -> wrong; 7 wins (wrong)
  assert prm.majority_vote_accuracy(answers, truths, n=4) == (1 + 0.5 + 0 + 0) / 4
  # n = 2 on [5, 5, 3, None]: of the 6 pairs, {5,5} right, {5,3} x2 a tie (1/2 each), {5,None} x2 right
  assert math.isclose(prm.majority_vote_accuracy(answers[:1], truths[:1], 2, num_subsets=20000), 4 / 6, abs_tol=0.02)
  # n = 1 equals the mean single-sample accuracy (None counts as wrong)
  single = np.mean([np.mean([a == t for a in row]) for row, t in zip(answers, truths)])
  assert abs(prm.majority_vote_accuracy(answers, truths, 1, num_subsets=4000, seed=1) - single) < 0.02


# ---- dense process rewards ----

def test_process_rewards_hand_computed():
  probs = np.asarray([[0.9, 0.1, 0.8, 0.3, 0.5]], np.float32)
  mask = np.asarray([[0, 1, 0, 1, 1]], bool)
  np.testing.assert_allclose(prm_reward.process_rewards(probs, mask), [[0, 0.1, 0, 0.3, 0.5]], atol=1e-7)
  delta = prm_reward.process_rewards(probs, mask, mode="delta")
  np.testing.assert_allclose(delta, [[0, 0.1, 0, 0.2, 0.2]], atol=1e-7)
  assert np.isclose(float(delta.sum()), 0.5)  # telescopes to the last step's score
  with_outcome = prm_reward.process_rewards(probs, mask, outcome_B=np.asarray([1.0]), last_index_B=np.asarray([4]),
                                     outcome_weight=2.0)
  np.testing.assert_allclose(with_outcome, [[0, 0.1, 0, 0.3, 2.5]], atol=1e-7)
  with pytest.raises(ValueError, match="last_index_B"):
    prm_reward.process_rewards(probs, mask, outcome_B=np.asarray([1.0]))


# ---- a second task: labelling sees a task only through data.tasks.Task ----

def test_exact_and_monte_carlo_step_labels_of_a_toy_task():
  """"Count to 3" (tests/toy_task.py) answered "1 2 4 so 3": exact labels stop at the first error, are placed
  at each line's newline, and Monte-Carlo rollouts (a completer that keeps counting from the last number)
  label the steps by whether a completion from their prefix reaches the right answer."""
  task, three = toy_task.CountTask(), toy_task.example(3)
  text = "1\n2\n4\nso 3\n"
  labels = prm.task_step_labels(task, three, text)
  assert labels == [1.0, 1.0, 0.0, 0.0]
  steps = task.steps(text)
  assert [s.end for s in steps] == [1, 3, 5, 10]
  encoded = prm.encode_labelled_text(CharTokenizer(), task.prompt(three), text, [s.end for s in steps], labels)
  first = len(task.prompt(three)) + 1  # [BOS] + prompt
  positions = np.flatnonzero(encoded["step_mask"])
  np.testing.assert_array_equal(positions, [first + 1, first + 3, first + 5, first + 10])
  np.testing.assert_array_equal(encoded["step_targets"][positions], labels)

  def complete(prompts, n, rng):
    del rng
    out = []
    for prompt in prompts:
      lines = [line for line in prompt.split(":\n", 1)[1].split("\n") if line]
      if lines and lines[-1].startswith("so "):
        out += [""] * n
        continue
      m = int(lines[-1]) if lines else 0
      out += ["".join(f"{i}\n" for i in range(m + 1, 4)) + f"so {max(m, 3)}\n"] * n
    return out

  outcomes = prm.rollout_outcomes([task.prompt(three)], [prm.step_prefixes(text, steps)],
                                  [lambda t: task.is_correct(three, t)], complete, 2, jax.random.key(0))
  np.testing.assert_array_equal(outcomes[0], [[True, True], [True, True], [False, False], [True, True]])
  hard, soft = prm.mc_labels(outcomes[0])
  np.testing.assert_array_equal(hard, [1, 1, 0, 1])  # the right final answer after an error: MC says good
  with pytest.raises(ValueError, match="no exact step checks"):
    prm.task_step_labels(get_task("gsm8k"), three, text)
