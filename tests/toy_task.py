"""A second, toy task for the task-generic loops: "count to n", one number per line, then "so n".

    Count to 3:
    1
    2
    3
    so 3

Steps are the lines; step k < n is correct iff it reads k + 1, the last step iff it reads "so n". Nothing
about it is arithmetic, so a loop that handles it sees its task only through data.tasks.Task.
"""

from star_jax.data.tasks import Example, Task, require_answer


class CountTask(Task):
  name = "count"
  has_step_checks = True

  def prompt(self, example: Example) -> str:
    return f"Count to {example.question}:\n"

  def hinted_prompt(self, example: Example) -> str:
    return f"Count to {example.question} (ends with so {require_answer(example)}):\n"

  def target(self, example: Example) -> str:
    n = int(example.question)
    return "".join(f"{i}\n" for i in range(1, n + 1)) + f"so {n}\n"

  def extract_answer(self, generation: str) -> str | None:
    for line in generation.split("\n"):
      if line.startswith("so ") and line[3:].strip().isdigit():
        return str(int(line[3:]))
    return None

  def trim(self, generation: str) -> str:
    start = 0
    for line in generation.split("\n"):
      if line.startswith("so "):
        return generation[:start + len(line)] + "\n"
      start += len(line) + 1
    return generation

  def from_features(self, features) -> Example:
    return example(int(features["n"]))

  def step_correct(self, example: Example, generation: str) -> list[bool]:
    n = int(example.question)
    want = [str(i) for i in range(1, n + 1)] + [f"so {n}"]
    return [k < len(want) and step.text.strip() == want[k] for k, step in enumerate(self.steps(generation))]

  def expected_steps(self, example: Example) -> int:
    return int(example.question) + 1


def example(n: int) -> Example:
  """The question "count to n"; group 1 for n <= 4, group 2 above."""
  return Example(question=str(n), answer=str(n), group=1 if n <= 4 else 2, id=f"count{n}")
