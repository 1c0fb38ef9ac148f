"""Tests for the TFDS arithmetic builder and the grain training pipeline."""

import itertools

import jax
import numpy as np
import pytest

from star_jax.data.arithmetic import Problem, answer_text, prompt_text, sample_problems, target_text
from star_jax.data.arithmetic_tfds import ArithmeticBuilderConfig, build_arithmetic
from star_jax.data.pipeline import encode_example, make_eval_problems, make_train_dataset
from star_jax.data.tokenizer import CharTokenizer

TOK = CharTokenizer()
KEYS = ("inputs_BxT", "targets_BxT", "loss_mask_BxT", "segment_ids_BxT", "positions_BxT")
SMALL = dict(max_train_digits=3, max_test_digits=4, rationales_per_digit=12, questions_per_digit=6, test_per_digit=5)


def _records(n_digits=(1, 2, 3), per_digit=10, seed=0):
    probs = [p for n in n_digits for p in sample_problems(n, per_digit, seed)]
    return [{"prompt": prompt_text(p), "target": target_text(p)} for p in probs]


def _take(dataset_or_iter, k):
    it = iter(dataset_or_iter)
    return [next(it) for _ in range(k)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k])


def _segments(batch):
    """Yields (row, segment id, slice) of every example in a batch."""
    for r, seg_T in enumerate(batch["segment_ids_BxT"]):
        for s in range(1, int(seg_T.max()) + 1):
            (idx,) = np.nonzero(seg_T == s)
            yield r, s, slice(int(idx[0]), int(idx[-1]) + 1)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return build_arithmetic(tmp_path_factory.mktemp("tfds"), **SMALL)


def test_encode_example_mask_covers_exactly_target_and_eos():
    prompt, target = prompt_text(Problem(5, 7)), target_text(Problem(5, 7))
    ex = encode_example(TOK, prompt, target.encode())  # bytes accepted, as TFDS returns them
    n = 1 + len(prompt) + len(target)  # L - 1
    assert all(ex[k].shape == (n,) for k in ex)
    assert ex["inputs"].dtype == ex["targets"].dtype == np.int32 and ex["loss_mask"].dtype == np.float32
    assert ex["inputs"][0] == TOK.bos_id and ex["targets"][-1] == TOK.eos_id
    np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
    assert ex["loss_mask"].sum() == len(target) + 1
    on = ex["loss_mask"] == 1.0
    assert TOK.decode(ex["targets"][on], skip_special=False) == target + "<eos>"
    assert TOK.decode(ex["targets"][~on]) == prompt
    assert np.all(on[len(prompt):]) and not np.any(on[: len(prompt)])


def test_packed_batch_invariants():
    records = _records()
    examples = {TOK.decode(encode_example(TOK, r["prompt"], r["target"])["inputs"]) for r in records}
    batches = _take(make_train_dataset(records, TOK, batch_size=4, seq_len=192, seed=0), 6)
    n_segments = 0
    for b in batches:
        assert set(b) == set(KEYS)
        for k in KEYS:
            assert b[k].shape == (4, 192)
        assert b["loss_mask_BxT"].dtype == np.float32 and b["segment_ids_BxT"].dtype == np.int32
        seg, pos, mask = b["segment_ids_BxT"], b["positions_BxT"], b["loss_mask_BxT"]
        assert np.all(mask[seg == 0] == 0) and np.all(pos[seg == 0] == 0)
        assert np.all(b["inputs_BxT"][seg == 0] == TOK.pad_id)
        for row in seg:  # segments are contiguous, numbered 1.. in order, padding only at the end
            nz = row[row > 0]
            assert np.all(np.diff(nz) >= 0) and nz[0] == 1 and set(nz) == set(range(1, nz.max() + 1))
            assert np.all(row[len(nz):] == 0)
        for r, _, sl in _segments(b):
            n_segments += 1
            np.testing.assert_array_equal(pos[r, sl], np.arange(sl.stop - sl.start))  # positions restart
            inputs, targets, m = b["inputs_BxT"][r, sl], b["targets_BxT"][r, sl], mask[r, sl]
            assert inputs[0] == TOK.bos_id and targets[-1] == TOK.eos_id  # whole example in one row
            np.testing.assert_array_equal(inputs[1:], targets[:-1])
            text = TOK.decode(inputs)
            assert text in examples
            prompt_len = text.index("Target:\n") + len("Target:\n")
            assert np.all(m[:prompt_len] == 0) and np.all(m[prompt_len:] == 1)  # zero on prompt tokens
    assert n_segments > 4 * 6  # short 1-digit examples share rows


def test_pad_mode_one_example_per_row():
    b = _take(make_train_dataset(_records(), TOK, batch_size=3, seq_len=160, seed=0, pack=False), 1)[0]
    for k in KEYS:
        assert b[k].shape == (3, 160)
    assert set(np.unique(b["segment_ids_BxT"])) == {0, 1}
    for r in range(3):
        n = int(b["segment_ids_BxT"][r].sum())
        np.testing.assert_array_equal(b["positions_BxT"][r, :n], np.arange(n))
        assert np.all(b["positions_BxT"][r, n:] == 0) and np.all(b["loss_mask_BxT"][r, n:] == 0)
        assert b["targets_BxT"][r, n - 1] == TOK.eos_id


def test_deterministic_given_seed_and_reshuffled_each_epoch():
    records = _records(per_digit=4)
    a = _take(make_train_dataset(records, TOK, batch_size=2, seq_len=160, seed=3), 5)
    _assert_batches_equal(a, _take(make_train_dataset(records, TOK, batch_size=2, seq_len=160, seed=3), 5))
    c = _take(make_train_dataset(records, TOK, batch_size=2, seq_len=160, seed=4), 5)
    assert any(not np.array_equal(x["inputs_BxT"], y["inputs_BxT"]) for x, y in zip(a, c))
    # Pad mode, one record per row: each epoch is a permutation of the source, in a new order.
    n = len(records)
    rows = [TOK.decode(row) for b in _take(make_train_dataset(records, TOK, batch_size=n, seq_len=160, seed=3,
                                                              pack=False), 2) for row in b["inputs_BxT"]]
    epoch0, epoch1 = rows[:n], rows[n:]
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == n and epoch0 != epoch1


@pytest.mark.parametrize("pack", [True, False])
def test_get_state_set_state_resumes_exactly(pack):
    records = _records(per_digit=5)  # small source: the resumed stretch crosses epoch boundaries
    ds = make_train_dataset(records, TOK, batch_size=3, seq_len=160, seed=0, pack=pack)
    it = iter(ds)
    _take(it, 4)
    state = it.get_state()
    expected = _take(it, 12)
    fresh = iter(make_train_dataset(records, TOK, batch_size=3, seq_len=160, seed=0, pack=pack))
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 12), expected)


def test_too_long_example_raises_with_its_length():
    records = [{"prompt": prompt_text(Problem(12345678, 87654321)), "target": target_text(Problem(12345678, 1))}]
    for pack in (True, False):
        with pytest.raises(ValueError, match=r"example of \d+ tokens .* exceeds seq_len=64"):
            _take(make_train_dataset(records, TOK, batch_size=1, seq_len=64, seed=0, pack=pack), 1)


def test_shard_by_process_gives_disjoint_shards(monkeypatch):
    records = _records(n_digits=(3,), per_digit=8)
    seen = []
    for index in range(2):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda i=index: i)
        b = _take(make_train_dataset(records, TOK, batch_size=4, seq_len=160, seed=0, pack=False), 1)[0]
        seen.append({TOK.decode(row) for row in b["inputs_BxT"]})
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_tfds_splits_sizes_contents_and_disjointness(builder):
    splits = builder.info.splits
    assert set(splits) == {"rationales", "questions", *(f"test_{n}digit" for n in range(1, 5))}
    assert splits["rationales"].num_examples == 3 * 12 and splits["questions"].num_examples == 3 * 6
    rationales, questions = builder.as_data_source("rationales"), builder.as_data_source("questions")
    r0 = rationales[0]
    assert isinstance(r0["prompt"], bytes) and isinstance(r0["target"], bytes)
    p = Problem(int(r0["a"]), int(r0["b"]))
    assert r0["prompt"].decode() == prompt_text(p) and r0["target"].decode() == target_text(p)
    assert r0["answer"].decode() == answer_text(p) and int(r0["n_digits"]) == p.n_digits
    assert all(questions[i]["target"] == b"" for i in range(len(questions)))
    train = {n: set() for n in range(1, 4)}
    for q in make_eval_problems(rationales) + make_eval_problems(questions):
        train[q.n_digits].add(q)
    assert len(train[2]) == len(train[3]) == 18  # for n >= 2 rationales and questions are distinct problems
    for n in range(1, 5):
        test = make_eval_problems(builder.as_data_source(f"test_{n}digit"))
        assert len(test) == 5 and all(q.n_digits == n for q in test)
        if n >= 2:
            assert not set(test) & train.get(n, set())


def test_tfds_deterministic_idempotent_and_keyed_by_config(builder, tmp_path):
    other = build_arithmetic(tmp_path, config=ArithmeticBuilderConfig(**SMALL))
    assert other.data_dir != builder.data_dir
    for split in builder.info.splits:
        a, b = builder.as_data_source(split), other.as_data_source(split)
        assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    again = build_arithmetic(tmp_path, **SMALL)  # reuses the prepared data
    assert again.data_dir == other.data_dir
    seeded = build_arithmetic(tmp_path, **{**SMALL, "seed": 1})
    assert seeded.data_dir != other.data_dir
    assert make_eval_problems(seeded.as_data_source("test_4digit")) != make_eval_problems(
        other.as_data_source("test_4digit"))
    default = ArithmeticBuilderConfig()
    assert default.name == "train5_test8_r2000_q10000_t1000_seed0"
    with pytest.raises(ValueError, match="not both"):
        build_arithmetic(tmp_path, config=default, seed=2)


def test_pipeline_reads_tfds_array_record_split(builder):
    source = builder.as_data_source("rationales")
    batches = _take(make_train_dataset(source, TOK, batch_size=2, seq_len=160, seed=0), 8)
    allowed = {TOK.decode(encode_example(TOK, source[i]["prompt"], source[i]["target"])["inputs"])
               for i in range(len(source))}
    for b in batches:
        for r, _, sl in _segments(b):
            assert TOK.decode(b["inputs_BxT"][r, sl]) in allowed
    again = list(itertools.islice(iter(make_train_dataset(source, TOK, batch_size=2, seq_len=160,
                                                                  seed=0)), 8))
    _assert_batches_equal(batches, again)  # deterministic across fresh pipelines
