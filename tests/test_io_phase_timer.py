"""io.phase_timer: a phase's first real timing is kept on resume, and two processes' phases are merged."""

from star_jax import io


def test_phase_timer_keeps_first_timing_and_merges_other_processes(tmp_path):
  path = str(tmp_path / "timings.json")
  main, other = io.phase_timer(path), io.phase_timer(path)  # two processes of one study, started together
  assert main("a", lambda: 1) == 1
  other("b", lambda: None)  # written by the other process meanwhile
  main("c", lambda: None)
  assert set(io.read_json(path)) == {"a", "b", "c"}
  first = io.read_json(path)["a"]
  resumed = io.phase_timer(path)
  resumed("a", lambda: sum(range(10**6)))  # a resumed run reloads the phase: its first timing stays
  assert io.read_json(path)["a"] == first and resumed.timings["b"] == io.read_json(path)["b"]
