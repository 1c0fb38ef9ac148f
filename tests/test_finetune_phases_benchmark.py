"""benchmarks/finetune_phases.py: the phase schedule it projects over, by hand."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import finetune_phases  # noqa: E402

RECORDS = [  # star_metrics.jsonl rows, out of order; iteration 0 is the base model's evaluation
    {"iteration": 2, "train_steps": 960, "acc_train_lengths": 0.47},
    {"iteration": 0, "acc_train_lengths": 0.95},
    {"iteration": 1, "train_steps": 800, "acc_train_lengths": 0.44},
    {"iteration": 4, "train_steps": 1383, "acc_train_lengths": 0.90},
    {"iteration": 3, "train_steps": 1152, "acc_train_lengths": 0.52},
]


def test_steps_to_accuracy_first_iteration_at_threshold():
  # The base model's 0.95 does not count; iteration 4 is the first at >= 0.90 (equality counts).
  assert finetune_phases.steps_to_accuracy(RECORDS, 0.9) == (4, [800, 960, 1152, 1383])
  assert finetune_phases.steps_to_accuracy(RECORDS, 0.45) == (2, [800, 960])
  with pytest.raises(ValueError):
    finetune_phases.steps_to_accuracy(RECORDS, 0.91)


def test_full5_record_reaches_90_at_iteration_6():
  # The recorded full5 run (experiments/star_arithmetic/README.md): 89.4% after 4, 70.5% after 5, 96.5% after 6.
  cfg = finetune_phases.recipe_config("full5")
  schedule, _ = finetune_phases.phase_schedule("full5", cfg)
  assert schedule == {"base": [3000], "iteration": [800, 960, 1152, 1383, 1659, 1991]}


def test_projected_seconds_hand_computed():
  # base 1,200 steps x 0.1 s + iterations (800 + 960) x 0.2 s = 120 + 352 s.
  seconds = finetune_phases.projected_seconds({"base": [1200], "iteration": [800, 960]}, {"base": 0.1, "iteration": 0.2})
  assert seconds == pytest.approx(472.0)


def test_example_lengths_runs_of_segments():
  segment_ids = np.array([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 2, 2]])
  assert finetune_phases.example_lengths(segment_ids).tolist() == [3, 2, 1, 5]
