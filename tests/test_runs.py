"""runs: --root discovery (depth, the evaluator's own outputs), and which checkpoint of a run comes
first (--order)."""

from __future__ import annotations

from pathlib import Path

from evaluator import checkpoints
from evaluator.backlog import Backlog
from evaluator.sources import discover


def state_file(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    (directory / "checkpoint").write_text("\n".join(lines) + "\n")


def test_discovery_finds_runs_to_a_depth_and_never_the_evaluators_outputs(tmp_path: Path) -> None:
    state_file(tmp_path / "a" / "model", "model.ckpt-1")
    state_file(tmp_path / "b" / "seed1" / "model", "model.ckpt-1")
    state_file(tmp_path / "a" / "model" / "export" / "best", "model.ckpt-1")  # a kept best checkpoint
    state_file(tmp_path / "a" / "model" / "eval_raw", "model.ckpt-1")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "weights.epoch-1.weights.h5").write_bytes(b"")
    found = discover(str(tmp_path), depth=3, weight_files=False)
    assert found == [str((tmp_path / "a" / "model").resolve()), str((tmp_path / "b" / "seed1" / "model").resolve())]
    assert discover(str(tmp_path), depth=2, weight_files=False) == [str((tmp_path / "a" / "model").resolve())]
    assert str((tmp_path / "c").resolve()) in discover(str(tmp_path), depth=3, weight_files=True)


def test_oldest_first_or_newest_first(tmp_path: Path) -> None:
    state_file(tmp_path, "model.ckpt-10", "model.ckpt-30", "model.ckpt-20")
    backlog = Backlog(str(tmp_path), grace=60)
    backlog.observe(checkpoints.read_state(str(tmp_path)))
    oldest = backlog.first_due(skip=set())
    newest = backlog.first_due(skip=set(), newest=True)
    assert (oldest.checkpoint.name, newest.checkpoint.name) == ("model.ckpt-10", "model.ckpt-30")  # type: ignore[union-attr]
    assert backlog.first_due(skip={"model.ckpt-30"}, newest=True).checkpoint.name == "model.ckpt-20"  # type: ignore[union-attr]
