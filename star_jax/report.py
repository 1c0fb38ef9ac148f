"""Human-readable results: markdown tables and PNG plots written next to the metrics."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def digit_lengths(accuracy: dict[str, float]) -> list[int]:
  """The n of every "acc_<n>digit" key."""
  return sorted(int(k[len("acc_"):-len("digit")]) for k in accuracy
                if k.startswith("acc_") and k.endswith("digit") and k[len("acc_"):-len("digit")].isdigit())


def accuracy_table(accuracy: dict[str, float], max_train_digits: int) -> str:
  """Markdown table of accuracy per digit length, marking lengths beyond the training range."""
  lines = ["| digits | accuracy | |", "|---:|---:|---|"]
  for n in digit_lengths(accuracy):
    note = "length generalisation (not trained on)" if n > max_train_digits else ""
    lines.append(f"| {n} | {100 * accuracy[f'acc_{n}digit']:.1f}% | {note} |")
  lines.append(f"| **1–{max_train_digits}** | **{100 * accuracy['acc_train_lengths']:.1f}%** | |")
  return "\n".join(lines)


def plot_accuracy_by_digits(accuracy: dict[str, float], max_train_digits: int, path: str, title: str) -> None:
  lengths = digit_lengths(accuracy)
  values = [100 * accuracy[f"acc_{n}digit"] for n in lengths]
  colors = ["tab:blue" if n <= max_train_digits else "tab:gray" for n in lengths]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(lengths, values, color=colors)
  ax.set_xlabel("digits per operand (gray: longer than any training example)")
  ax.set_ylabel("held-out accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_xticks(lengths)
  ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
