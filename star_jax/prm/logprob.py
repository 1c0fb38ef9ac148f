"""Verifiers from the policy's own token log-probabilities: an untrained one and a small fitted head.

A causal LM's hidden state at a step's closing newline has to re-derive whether an earlier digit was right;
the policy's probability of each token, read where the token is generated, already says how surprising it
was. On arithmetic scratchpads the lowest log-prob over the prefix, untrained, scored step AUC 0.999 where
a head on the final hidden state reached 0.71–0.74 (DESIGN.md section 5). This module computes

  ℓ_t = log π(y_t | y_<t)       a_t = 1[y_t = argmax_v π(v | y_<t)]

at every solution token (`token_logprobs`, one jitted forward per batch), the per-step features of
`step_features` (min / sum of ℓ over the step and over the prefix, count of non-argmax tokens), the
untrained verifier P̂(prefix k good) = exp(min_{t ≤ end_k} ℓ_t) (`min_prefix_scores`), and a logistic
head fitted on the features against exact step labels (`fit_logistic`, optax Adam on the mean binary
cross-entropy + L2). Related: token-probability confidence as a correctness signal (Kadavath et al. 2022,
"Language Models (Mostly) Know What They Know", arXiv 2207.05221); the step-level minimum follows
Math-Shepherd's min aggregation (Wang et al. 2023, arXiv 2312.08935).

Position conventions are those of `prm.encode_labelled_text`: position i predicts targets[i] = inputs[i+1];
loss_mask marks the positions whose target is a solution token (or the final EOS); step k ends at the
position p_k of its closing token (step_mask), so its tokens' log-probs sit at positions [p_{k−1}, p_k)
(p_{−1} = the first loss position).

`roc_auc` and `text_ranked_first` measure any verifier against exact labels.

A **log-prob PRM** (`LogprobPRM`, saved as a directory by `save_logprob_prm`, read by `load_logprob_prm`)
is the learned process reward of a policy-gradient run (pg/rewards.py, rl.process_reward_model): a FROZEN
model M (the PG start model, a STaR run's M_N) computes the features f_k of each sampled response's steps,
and the fitted head turns them into

  P̂(step k good) = σ(w · f_k + b)      (f_k standardised with the training features' μ, s: `LogisticHead`)

What makes a directory one is its `logprob_prm.json` (SPEC_FILE, written last): the feature names, the
head, M's model and train configs, and where M's parameters are (a finished fine-tuning directory:
`train.json` + `checkpoints/`, e.g. a STaR run's `iter_<N>/`) with its step count and a checksum of the
parameters, both checked on load.
As a reward it enters R = 1(ŷ = y) + w Σ_{k ≤ S} P̂(step k good) / S (prm/reward.py's dense return, the step
scores of Lightman et al. 2023, arXiv 2305.20050, as PPO rewards, as Math-Shepherd does). The head is fitted
once, on the start model's own samples and exact step labels; nothing here refits it while a policy moves.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from star_jax import config as config_lib
from star_jax import io, losses, models, sharding, train
from star_jax.models import ModelConfig

FEATURES = ("step_min", "prefix_min", "step_sum", "prefix_sum", "step_not_argmax", "prefix_not_argmax")


# ---- per-token log-probs of the policy ----

@functools.partial(jax.jit, static_argnames=("model_config",))
def _token_stats(model_config: ModelConfig, params, inputs_BxT, targets_BxT, segment_ids_BxT, positions_BxT):
  logits_BxTxV = models.forward(model_config, params, inputs_BxT, segment_ids_BxT=segment_ids_BxT,
                                positions_BxT=positions_BxT)
  logps_BxT = losses.token_logprobs(logits_BxTxV, targets_BxT)
  is_argmax_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
  return logps_BxT, is_argmax_BxT


def pad_rows(examples: Sequence[Mapping[str, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
  """inputs/targets/segment_ids/positions [B, seq_len], one example per row, right-padded (segment id 0)."""
  b = len(examples)
  out = {k: np.zeros((b, seq_len), np.int32) for k in ("inputs_BxT", "targets_BxT", "segment_ids_BxT",
                                                        "positions_BxT")}
  for i, ex in enumerate(examples):
    n = len(ex["inputs"])
    if n > seq_len:
      raise ValueError(f"example {i} has {n} tokens > seq_len={seq_len}")
    out["inputs_BxT"][i, :n], out["targets_BxT"][i, :n] = ex["inputs"], ex["targets"]
    out["segment_ids_BxT"][i, :n], out["positions_BxT"][i, :n] = 1, np.arange(n)
  return out


def token_logprobs(model_config: ModelConfig, params, examples: Sequence[Mapping[str, np.ndarray]], *, mesh: Mesh,
                   batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
  """Per example: {"logps": ℓ [L] float32, "is_argmax": a [L] bool} at every position (targets[i] given inputs[≤i]).

  Rows go in fixed [batch_size, seq_len] batches (the last one padded) so the forward compiles once.
  """
  batch_size = -(-batch_size // sharding.batch_divisor(mesh)) * sharding.batch_divisor(mesh)
  out = []
  for start in range(0, len(examples), batch_size):
    chunk = list(examples[start:start + batch_size])
    batch = pad_rows(chunk + [chunk[0]] * (batch_size - len(chunk)), seq_len)
    logps_BxT, argmax_BxT = sharding.to_host(_token_stats(
        model_config, params, *(sharding.shard_global_batch(batch[k], mesh)
                                for k in ("inputs_BxT", "targets_BxT", "segment_ids_BxT", "positions_BxT"))))
    for i, ex in enumerate(chunk):
      n = len(ex["inputs"])
      out.append({"logps": np.asarray(logps_BxT[i, :n], np.float32), "is_argmax": np.asarray(argmax_BxT[i, :n], bool)})
  return out


# ---- step features ----

def step_spans(loss_mask_L: np.ndarray, step_mask_L: np.ndarray) -> list[tuple[int, int]]:
  """[(start, end)) position ranges holding each step's token log-probs: [p_{k−1}, p_k), p_{−1} = first loss position."""
  loss_positions = np.flatnonzero(np.asarray(loss_mask_L) > 0)
  if loss_positions.size == 0:
    return []
  ends = np.flatnonzero(np.asarray(step_mask_L) > 0)
  starts = np.concatenate([[loss_positions[0]], ends[:-1]])
  return [(int(a), int(b)) for a, b in zip(starts, ends)]


def step_features(logps_L: np.ndarray, is_argmax_L: np.ndarray, loss_mask_L: np.ndarray,
                  step_mask_L: np.ndarray) -> np.ndarray:
  """[S, len(FEATURES)] per step k with token log-probs ℓ over span_k = [p_{k−1}, p_k), prefix_k = [p_{−1}, p_k):

    step_min = min_{span_k} ℓ      prefix_min = min_{prefix_k} ℓ      step_sum = Σ_{span_k} ℓ
    prefix_sum = Σ_{prefix_k} ℓ    step_not_argmax = Σ_{span_k} (1 − a)    prefix_not_argmax = Σ_{prefix_k} (1 − a)

  A step with no tokens in its span (its closing token is its only one) has step_min = 0.
  """
  spans = step_spans(loss_mask_L, step_mask_L)
  out = np.zeros((len(spans), len(FEATURES)), np.float32)
  if not spans:
    return out
  logps_L = np.asarray(logps_L, np.float64)
  miss_L = 1.0 - np.asarray(is_argmax_L, np.float64)
  first = spans[0][0]
  running_min = np.minimum.accumulate(logps_L[first:])
  cum_logp, cum_miss = np.cumsum(logps_L[first:]), np.cumsum(miss_L[first:])
  for k, (a, b) in enumerate(spans):
    if b <= first:
      continue
    span = slice(a, b)
    out[k] = (logps_L[span].min() if b > a else 0.0, running_min[b - 1 - first],
              logps_L[span].sum(), cum_logp[b - 1 - first], miss_L[span].sum(), cum_miss[b - 1 - first])
  return out


def examples_step_features(model_config: ModelConfig, params, examples: Sequence[Mapping[str, np.ndarray]], *,
                           mesh: Mesh, batch_size: int, seq_len: int) -> list[np.ndarray]:
  """`step_features` [S_i, F] of every example (prm.steps.encode_labelled_text arrays) under the model `params`:
  one `token_logprobs` forward per batch of `batch_size` rows of `seq_len` tokens."""
  stats = token_logprobs(model_config, params, examples, mesh=mesh, batch_size=batch_size, seq_len=seq_len)
  return [step_features(st["logps"], st["is_argmax"], ex["loss_mask"], ex["step_mask"])
          for st, ex in zip(stats, examples)]


def min_prefix_scores(features_SxF: np.ndarray) -> np.ndarray:
  """The untrained verifier: P̂(prefix k good) = exp(min_{t ≤ end_k} ℓ_t), from `step_features` rows."""
  return np.exp(np.asarray(features_SxF)[:, FEATURES.index("prefix_min")]).astype(np.float32)


# ---- a logistic head on the features ----

@dataclasses.dataclass(frozen=True)
class LogisticHead:
  """P(good | x) = σ(w · (x − μ) / s + b), μ and s the training features' mean and standard deviation."""

  mean_F: np.ndarray
  scale_F: np.ndarray
  w_F: np.ndarray
  b: float

  def logits(self, x_NxF: np.ndarray) -> np.ndarray:
    return ((np.asarray(x_NxF, np.float64) - self.mean_F) / self.scale_F) @ self.w_F + self.b

  def predict(self, x_NxF: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-self.logits(x_NxF)))).astype(np.float32)

  def to_json(self) -> dict:
    return {"mean_F": self.mean_F.tolist(), "scale_F": self.scale_F.tolist(), "w_F": self.w_F.tolist(), "b": self.b}

  @classmethod
  def from_json(cls, d: Mapping) -> LogisticHead:
    return cls(*(np.asarray(d[k], np.float64) for k in ("mean_F", "scale_F", "w_F")), float(d["b"]))


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _fit(x_NxF, y_N, l2, *, steps: int, lr: float):
  tx = optax.adam(lr)

  def loss_fn(p):
    z_N = x_NxF @ p["w_F"] + p["b"]
    return jnp.mean(jax.nn.softplus(z_N) - y_N * z_N) + l2 * jnp.sum(p["w_F"] ** 2)

  def update(carry, _):
    p, opt = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, u), opt), loss

  p0 = {"w_F": jnp.zeros(x_NxF.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
  (p, _), losses_S = jax.lax.scan(update, (p0, tx.init(p0)), None, length=steps)
  return p, losses_S


def fit_logistic(x_NxF: np.ndarray, y_N: np.ndarray, *, steps: int = 500, lr: float = 0.1,
                 l2: float = 1e-4) -> tuple[LogisticHead, np.ndarray]:
  """Logistic regression (full batch, Adam) on standardised features: min_{w,b} mean_i ℓ(z_i, y_i) + l2·|w|²,
  ℓ(z, y) = softplus(z) − y·z (binary cross-entropy, y ∈ [0, 1]). Returns (head, loss per step)."""
  x_NxF, y_N = np.asarray(x_NxF, np.float64), np.asarray(y_N, np.float64)
  if x_NxF.ndim != 2 or y_N.shape != (x_NxF.shape[0],) or x_NxF.shape[0] == 0:
    raise ValueError(f"fit_logistic: need x [N, F] and y [N] with N > 0, got {x_NxF.shape} and {y_N.shape}")
  mean_F, scale_F = x_NxF.mean(axis=0), x_NxF.std(axis=0)
  scale_F = np.where(scale_F > 0, scale_F, 1.0)
  p, losses_S = _fit(jnp.asarray((x_NxF - mean_F) / scale_F, jnp.float32), jnp.asarray(y_N, jnp.float32),
                     jnp.float32(l2), steps=steps, lr=lr)
  return LogisticHead(mean_F, scale_F, np.asarray(p["w_F"], np.float64), float(p["b"])), np.asarray(losses_S)


def save_head(path: str, head: LogisticHead, features: Sequence[str] = FEATURES) -> None:
  """Write a fitted head as JSON (atomically): {"features": names of its inputs, in order, **head.to_json()}."""
  io.write_json(path, {"features": list(features), **head.to_json()})


def _head_from(d: Mapping, where: str) -> LogisticHead:
  if list(d.get("features", [])) != list(FEATURES):
    raise ValueError(f"{where}: the head was fitted on features {d.get('features')}, this code computes "
                     f"{list(FEATURES)} (prm.logprob.FEATURES)")
  head = LogisticHead.from_json(d)
  if not all(v.shape == (len(FEATURES),) for v in (head.mean_F, head.scale_F, head.w_F)):
    raise ValueError(f"{where}: head arrays must have {len(FEATURES)} entries (one per feature)")
  return head


def load_head(path: str) -> LogisticHead:
  """The head `save_head` wrote; ValueError when its feature names are not FEATURES."""
  return _head_from(io.read_json(path), path)


# ---- a log-prob PRM directory: a frozen model's features + the fitted head ----

SPEC_FILE = "logprob_prm.json"  # the file that makes a directory a log-prob PRM (module docstring)
SPEC_FORMAT = "logprob_prm/1"


def params_checksum(params) -> float:
  """Σ over every parameter of |x| (float64, on the host): a fingerprint of a model's weights."""
  return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(sharding.to_host(params))))


def is_logprob_prm(directory: str) -> bool:
  """Whether `directory` holds a log-prob PRM (its SPEC_FILE)."""
  return os.path.exists(os.path.join(directory, SPEC_FILE))


def save_logprob_prm(directory: str, head: LogisticHead, *, model_config: ModelConfig, train_config,
                     params_directory: str, keep: int, params, extra: Mapping[str, Any] | None = None) -> str:
  """Write `<directory>/logprob_prm.json` atomically (the file that makes it a PRM; write it last) and return
  its path. `params_directory`: the frozen model's finished fine-tuning directory (train.json + checkpoints/,
  restored with `train_config`'s optimizer and `keep`), `params` its parameters (for the checksum);
  `extra`: more keys to record (what the head was fitted on)."""
  params_directory = os.path.abspath(params_directory)
  marker = os.path.join(params_directory, "train.json")
  if not os.path.exists(marker):
    raise FileNotFoundError(f"{marker} not found: the frozen model of a log-prob PRM must be a finished fine-tuning "
                            "directory (a STaR run's iter_<N>/ or base/)")
  spec = {"format": SPEC_FORMAT, "features": list(FEATURES), "head": head.to_json(),
          "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
          "params": {"directory": params_directory, "keep": int(keep), "steps": int(io.read_json(marker)["steps"]),
                     "checksum": params_checksum(params)},
          **dict(extra or {})}
  path = os.path.join(directory, SPEC_FILE)
  io.write_json(path, spec)
  return path


@dataclasses.dataclass(frozen=True)
class LogprobPRM:
  """A loaded log-prob PRM: the frozen model (config + parameters on a mesh) and the head on its features."""

  head: LogisticHead
  model_config: ModelConfig
  params: Any
  spec: Mapping[str, Any]  # the logprob_prm.json it was loaded from

  def step_probs(self, examples: Sequence[Mapping[str, np.ndarray]], *, mesh: Mesh, batch_size: int,
                 seq_len: int) -> list[np.ndarray]:
    """P̂(step k good) = σ(w · f_k + b) [S_i] per example (prm.steps.encode_labelled_text arrays, a step end
    marked for every step to be scored), f_k = `step_features` of the frozen model's token log-probs."""
    features = examples_step_features(self.model_config, self.params, examples, mesh=mesh, batch_size=batch_size,
                                      seq_len=seq_len)
    return [self.head.predict(f) if len(f) else np.zeros(0, np.float32) for f in features]


def load_logprob_prm(directory: str, mesh: Mesh) -> LogprobPRM:
  """The log-prob PRM of `directory` with the frozen model restored onto `mesh`. FileNotFoundError naming the
  missing file (the spec, or the frozen model's train.json); ValueError when the frozen model is not the one
  the head was fitted on (another step count or parameter checksum) or the features differ."""
  spec_path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(spec_path):
    raise FileNotFoundError(f"{spec_path} not found: a log-prob PRM directory needs {SPEC_FILE} "
                            "(experiments/pg_star_arithmetic/from_star/train_prm.py writes it)")
  spec = io.read_json(spec_path)
  if spec.get("format") != SPEC_FORMAT:
    raise ValueError(f"{spec_path}: format {spec.get('format')!r}, expected {SPEC_FORMAT!r}")
  head = _head_from({"features": spec["features"], **spec["head"]}, spec_path)
  model_config = config_lib.from_mapping(ModelConfig, spec["model"], f"{spec_path}:model")
  train_config = config_lib.from_mapping(config_lib.TrainConfig, spec["train"], f"{spec_path}:train")
  where = spec["params"]
  marker = os.path.join(where["directory"], "train.json")
  if not os.path.exists(marker):
    raise FileNotFoundError(f"{spec_path}: the frozen model's directory holds no finished fine-tuning ({marker} "
                            "not found; was the STaR run moved or deleted?)")
  steps = int(io.read_json(marker)["steps"])
  if steps != where["steps"]:
    raise ValueError(f"{spec_path}: the frozen model in {where['directory']} was trained {steps} steps, the head "
                     f"was fitted on a model of {where['steps']} steps")
  params = train.restore_params(model_config, train_config, mesh, where["directory"], keep=where["keep"])
  checksum = params_checksum(params)
  if not np.isclose(checksum, where["checksum"], rtol=1e-6, atol=0.0):
    raise ValueError(f"{spec_path}: the parameters in {where['directory']} (checksum {checksum}) are not the ones "
                     f"the head was fitted on (checksum {where['checksum']})")
  return LogprobPRM(head, model_config, params, spec)


# ---- metrics ----

def roc_auc(scores, labels) -> float | None:
  """P(score of a random positive > score of a random negative), ties counted half (Mann–Whitney U / n₊n₋).

  None when only one class is present. O(N log N): average ranks of tied scores via np.unique.
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return None
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  upper = np.cumsum(counts)
  average_rank_U = upper - (counts - 1) / 2.0  # 1-based average rank of each distinct score
  ranks = average_rank_U[inverse]
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def text_ranked_first(scores_PxK, correct_PxK, texts_PxK) -> dict[str, float | int]:
  """Within-problem selection on distinct texts: over problems with at least one correct and one wrong
  distinct text, the fraction whose top-scored text is correct (ties at the top: the fraction of correct
  ones among them), and what uniformly random scores give (the fraction of correct distinct texts).

  A text sampled several times counts once (its first occurrence's score): the question is whether the
  verifier separates right from wrong texts, not how often the policy repeats itself.
  """
  hits, chance, problems = [], [], 0
  for scores_K, correct_K, texts_K in zip(scores_PxK, correct_PxK, texts_PxK):
    seen: dict[str, tuple[float, bool]] = {}
    for s, c, t in zip(scores_K, correct_K, texts_K):
      seen.setdefault(t, (float(s), bool(c)))
    s_U = np.asarray([v[0] for v in seen.values()])
    c_U = np.asarray([v[1] for v in seen.values()])
    if c_U.all() or not c_U.any():
      continue
    problems += 1
    top = s_U == s_U.max()
    hits.append(c_U[top].mean())
    chance.append(c_U.mean())
  return {"problems": problems, "ranked_first": float(np.mean(hits)) if hits else None,
          "random_scores": float(np.mean(chance)) if chance else None}
