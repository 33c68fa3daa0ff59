"""sources/pins: a complete checkpoint hard-linked where training's deletion cannot take it, copied
(within the budget) where a link cannot be made, let go once its row is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import structlog

from evaluator import checkpoints
from evaluator.sources.local import LocalDirectory
from evaluator.sources.pins import OWN_DIR, Pins, budget_bytes
from tests.conftest import train


def pinned_source(model_dir: Path, budget: int | str = "10%") -> LocalDirectory:
    location = checkpoints.normalize_model_dir(model_dir)
    return LocalDirectory(location, weight_files=False, pins=Pins(location, "default", budget, structlog.get_logger()))


def test_a_pin_outlives_training_deleting_the_checkpoint(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    source = pinned_source(model_dir)
    ckpt = checkpoints.at(str(model_dir), "model.ckpt-20")
    assert ckpt is not None and source.pin(ckpt)
    fingerprint = source.fingerprint(ckpt)
    pin = model_dir / OWN_DIR / "pins" / "default" / "model.ckpt-20.index"
    assert pin.stat().st_ino == (model_dir / "model.ckpt-20.index").stat().st_ino  # a link: no space taken
    for path in model_dir.glob("model.ckpt-20.*"):
        path.unlink()  # max_to_keep
    assert source.complete(ckpt) and source.fingerprint(ckpt) == fingerprint
    held = source.hold(ckpt)
    assert held.path.endswith(os.path.join("pins", "default", "model.ckpt-20")) and held.files
    held.close()
    assert [c.name for c in source.pinned()] == ["model.ckpt-20"]
    source.done(ckpt)
    assert not source.complete(ckpt) and source.pinned() == [] and not list(pin.parent.iterdir())


def test_another_file_system_means_copies_within_the_budget(tmp_path: Path, trained_dir: Path) -> None:
    """The pins' directory on tmpfs (a symlink), the model directory on disk: links fail with EXDEV,
    so the files are copied, as long as the copies fit the budget."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    elsewhere = Path("/dev/shm") / f"evaluator-pins-{os.getpid()}"
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here")
    elsewhere.mkdir()
    try:
        (model_dir / OWN_DIR).symlink_to(elsewhere, target_is_directory=True)
        size = sum(p.stat().st_size for p in model_dir.glob("model.ckpt-20.*"))
        source = pinned_source(model_dir, budget=int(size * 1.5))  # room for one checkpoint's copies
        first, second = (checkpoints.at(str(model_dir), n) for n in ("model.ckpt-20", "model.ckpt-40"))
        assert first is not None and second is not None
        assert source.pin(first)
        pin = elsewhere / "pins" / "default" / "model.ckpt-20.index"
        assert pin.stat().st_dev != (model_dir / "model.ckpt-20.index").stat().st_dev  # a copy
        assert pin.read_bytes() == (model_dir / "model.ckpt-20.index").read_bytes()
        assert not source.pin(second)  # past the budget: not pinned, nothing half-copied left
        assert [c.name for c in source.pinned()] == ["model.ckpt-20"]
        source.done(first)  # its row is written: the budget is free again
        assert source.pin(second)
    finally:
        shutil.rmtree(elsewhere)


def test_a_share_of_the_free_space(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    assert abs(budget_bytes("10%", str(tmp_path)) - stat.f_bavail * stat.f_frsize // 10) < 1 << 24
    assert budget_bytes(0, str(tmp_path)) == 0


def test_a_checkpoint_rewritten_under_its_name_is_pinned_again(tmp_path: Path) -> None:
    """Training restarted from scratch reuses names: the pin follows the new files."""
    model_dir = tmp_path / "model"
    train(model_dir, steps=20, save_every=20)
    source = pinned_source(model_dir)
    ckpt = checkpoints.at(str(model_dir), "model.ckpt-20")
    assert ckpt is not None and source.pin(ckpt)
    old = source.fingerprint(ckpt)
    for path in model_dir.glob("model.ckpt-20.*"):
        path.unlink()
    train(model_dir, steps=20, save_every=20, seed=7, resume=False)
    assert source.pin(ckpt) and source.fingerprint(ckpt) != old
    assert checkpoints.fingerprint(str(model_dir / OWN_DIR / "pins" / "default" / "model.ckpt-20")) == source.fingerprint(ckpt)
