"""grain input pipelines: prompt/target records -> packed (or padded) token batches for training.

Batch layout (numpy, [B, T]): inputs_BxT / targets_BxT (int32, next-token pairs), loss_mask_BxT (float32, 1.0
where the target token belongs to the example's target text or its EOS), segment_ids_BxT (int32, 0 = padding,
1.. = example index within the row) and positions_BxT (int32, restarting at 0 for each example; 0 on padding).
A model attends from token i to token j only if segment_ids match and j <= i.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from star_jax.data.arithmetic import Problem
from star_jax.data.tokenizer import CharTokenizer

_FIELDS = ("inputs", "targets", "loss_mask")


def _as_str(value: str | bytes, key: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"record field {key!r} must be str or bytes, got {type(value).__name__}")


def encode_example(tokenizer: CharTokenizer, prompt: str | bytes, target: str | bytes) -> dict[str, np.ndarray]:
    """tokens = [BOS] + prompt + target + [EOS] (length L) -> inputs/targets/loss_mask of length L - 1.

    loss_mask is 1.0 exactly where `targets` holds a character of `target` or the EOS.
    """
    prompt_ids = tokenizer.encode(_as_str(prompt, "prompt"), add_bos=True)
    target_ids = tokenizer.encode(_as_str(target, "target"), add_eos=True)
    tokens_L = np.asarray(prompt_ids + target_ids, dtype=np.int32)
    loss_mask = np.zeros(len(tokens_L) - 1, dtype=np.float32)
    loss_mask[len(prompt_ids) - 1 :] = 1.0  # targets[j] = tokens[j + 1] is a target token iff j + 1 >= |prompt|
    return {"inputs": tokens_L[:-1], "targets": tokens_L[1:], "loss_mask": loss_mask}


class _EncodeRecord:
    """Record {"prompt", "target", ...} -> encode_example, checking the length against seq_len."""

    def __init__(self, tokenizer: CharTokenizer, seq_len: int) -> None:
        self._tokenizer = tokenizer
        self._seq_len = seq_len

    def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        try:
            example = encode_example(self._tokenizer, record["prompt"], record["target"])
        except KeyError as e:
            raise KeyError(f"record lacks field {e}; has {sorted(record)}") from None
        length = len(example["inputs"])
        if length > self._seq_len:
            raise ValueError(
                f"example of {length} tokens (BOS + prompt + target + EOS, minus the shift) exceeds "
                f"seq_len={self._seq_len}; examples are never truncated. prompt={record['prompt'][:60]!r}"
            )
        return example


def _pad_example(example: Mapping[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example alone in a row of seq_len, in the packer's output layout."""
    n = len(example["inputs"])
    out = {}
    for k in _FIELDS:
        row = np.zeros(seq_len, dtype=example[k].dtype)
        row[:n] = example[k]
        out[k] = row
    out["inputs_segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
    out["inputs_positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
    return out


def _to_batch_dict(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs_BxT": batch["inputs"].astype(np.int32),
        "targets_BxT": batch["targets"].astype(np.int32),
        "loss_mask_BxT": batch["loss_mask"].astype(np.float32),
        "segment_ids_BxT": batch["inputs_segment_ids"].astype(np.int32),
        "positions_BxT": batch["inputs_positions"].astype(np.int32),
    }


def make_train_dataset(
    source: Sequence[Mapping[str, Any]],
    tokenizer: CharTokenizer,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    pack: bool = True,
    shard_by_process: bool = True,
    read_threads: int = 0,
) -> grain.IterDataset:
    """An infinite, deterministic stream of training batches (see the module docstring for the layout).

    source -> shard by JAX process -> shuffle(seed) -> repeat (new order each epoch) -> encode ->
    first-fit packing into rows of seq_len (or one example per padded row when pack=False) -> batch.

    Args:
      source: random-access records with "prompt" and "target" (str or bytes), e.g.
        `builder.as_data_source("rationales")` or a list of dicts.
      batch_size: rows per batch PER PROCESS.
      seq_len: row length T. An example longer than T (after the next-token shift) raises ValueError
        with its length; nothing is truncated.
      shard_by_process: each JAX process reads the records i with i % process_count == process_index.
      read_threads: grain ReadOptions.num_threads for the encode stage (0: in the consuming thread).

    `iter(dataset)` supports get_state()/set_state() for checkpointing the position.
    """
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    ds = grain.MapDataset.source(source)
    if shard_by_process and jax.process_count() > 1:
        ds = ds[jax.process_index() :: jax.process_count()]
    if len(ds) == 0:
        raise ValueError(f"make_train_dataset: empty source (or empty shard for process {jax.process_index()})")
    ds = ds.shuffle(seed=seed).repeat().map(_EncodeRecord(tokenizer, seq_len))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * batch_size))
    if pack:
        it = grain.experimental.FirstFitPackIterDataset(
            it,
            length_struct={k: seq_len for k in _FIELDS},
            num_packing_bins=batch_size,  # one packing round fills one batch
            shuffle_bins=False,
        )
    else:
        it = it.map(functools.partial(_pad_example, seq_len=seq_len))
    return it.batch(batch_size, drop_remainder=True).map(_to_batch_dict)


def make_eval_problems(source: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """The (a, b) of every record of a split (e.g. `builder.as_data_source("test_3digit")`), in order."""
    out = []
    for i in range(len(source)):
        record = source[i]
        try:
            out.append(Problem(int(record["a"]), int(record["b"])))
        except KeyError as e:
            raise KeyError(f"record {i} lacks field {e}; has {sorted(record)}") from None
    return out
