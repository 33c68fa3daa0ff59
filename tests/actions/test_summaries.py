"""actions/summaries: one TensorBoard point per (step, metric), read back from the event files."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import structlog
import tensorflow as tf

from evaluator.actions import Recorded
from evaluator.actions.summaries import Summaries, tags, written
from evaluator.evaluation import Evaluation, Status
from evaluator.store import Store
from tests.conftest import sqlite_url

WHEN = datetime(2026, 11, 30, tzinfo=timezone.utc)


def row(step: int, accuracy: float, sets: tuple[str, ...] = ("validation",)) -> Evaluation:
    metrics = {name: {"accuracy": accuracy, "loss": 1 - accuracy, "examples": 10} for name in sets}
    return Evaluation("/m", f"model.ckpt-{step}", step, Status.OK, WHEN, accuracy=accuracy, loss=1 - accuracy,
                      examples=10, metrics=metrics, goals={"accuracy": "max", "loss": "min"})


def points(directory: Path) -> list[tuple[int, str, float]]:
    """Every scalar in the directory's event files (up to a partial last record), each marked for
    TensorBoard's scalars plugin."""
    found = []
    for path in sorted(glob.glob(str(directory / "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    assert value.metadata.plugin_data.plugin_name == "scalars"
                    found.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
        except tf.errors.DataLossError:
            continue
    return sorted(found)


@pytest.fixture
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A real store: the lock that one summary directory's writers take turns with."""
    with Store.open(sqlite_url(tmp_path_factory.mktemp("state") / "evaluations.db"), create=True) as store:
        store.upgrade()
        yield store


def test_rows_become_points_once_across_restarts(tmp_path: Path, shared: Store) -> None:
    log = structlog.get_logger()
    rows = [row(100, 0.5), row(200, 0.75)]
    first = Summaries(str(tmp_path), log, shared)
    first.catch_up(rows[:1])  # the second row: recorded, then the process died before its summary
    first.close()
    second = Summaries(str(tmp_path), log, shared)  # the restart
    second.catch_up(rows)
    second.after(Recorded(row(300, 0.875), {}))
    second.close()
    third = Summaries(str(tmp_path), log, shared)
    third.catch_up([*rows, row(300, 0.875)])  # nothing is missing: nothing is written
    third.close()
    assert points(tmp_path) == [(100, "accuracy", 0.5), (100, "loss", 0.5), (200, "accuracy", 0.75),
                                (200, "loss", 0.25), (300, "accuracy", 0.875), (300, "loss", 0.125)]
    assert written(str(tmp_path)) == {(s, t) for s, t, _ in points(tmp_path)}


def test_several_sets_are_tagged_by_set() -> None:
    assert tags(row(1, 0.5, ("clean", "noisy"))) == {"clean/accuracy": 0.5, "clean/loss": 0.5, "noisy/accuracy": 0.5,
                                                     "noisy/loss": 0.5}
    assert tags(row(1, 0.5)) == {"accuracy": 0.5, "loss": 0.5}


def test_a_truncated_event_file_is_completed_at_the_next_start(tmp_path: Path, shared: Store) -> None:
    """A process killed while writing leaves a partial last record: the next start writes that
    point again (in a file of its own), and every point is there once."""
    rows = [row(1, 0.5), row(2, 0.625)]
    summaries = Summaries(str(tmp_path), structlog.get_logger(), shared)
    summaries.catch_up(rows)
    summaries.close()
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    Path(path).write_bytes(Path(path).read_bytes()[:-7])  # the last point's record, cut short
    assert (2, "loss") not in written(str(tmp_path)) and (1, "accuracy") in written(str(tmp_path))
    again = Summaries(str(tmp_path), structlog.get_logger(), shared)
    again.catch_up(rows)
    again.close()
    assert points(tmp_path) == [(1, "accuracy", 0.5), (1, "loss", 0.5), (2, "accuracy", 0.625), (2, "loss", 0.375)]


def test_a_pool_writes_each_point_once(tmp_path: Path, shared: Store) -> None:
    """A worker starting fills in a row another worker recorded but has not written yet; that worker,
    writing next, sees the newcomer's event file and writes nothing twice."""
    log = structlog.get_logger()
    running = Summaries(str(tmp_path), log, shared)
    running.catch_up([])
    running.after(Recorded(row(100, 0.5), {}))
    starting = Summaries(str(tmp_path), log, shared)  # row 200 is in the database, its point not yet written
    starting.catch_up([row(100, 0.5), row(200, 0.75)])
    running.after(Recorded(row(200, 0.75), {}))
    starting.after(Recorded(row(300, 0.875), {}))
    running.after(Recorded(row(400, 0.9375), {}))
    running.close()
    starting.close()
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
    assert points(tmp_path) == sorted((step, tag, value) for step, a in ((100, 0.5), (200, 0.75), (300, 0.875),
                                                                           (400, 0.9375))
                                      for tag, value in (("accuracy", a), ("loss", 1 - a)))


def test_a_removed_model_directory_is_not_made_again(tmp_path: Path, shared: Store) -> None:
    """The summary directory inside the model directory: once the model directory is removed, the
    points wait (deferred) rather than make it again; they are written when it is back."""
    model_dir = tmp_path / "model"
    directory = model_dir / "eval"
    summaries = Summaries(str(directory), structlog.get_logger(), shared, str(model_dir))
    with pytest.raises(FileNotFoundError):
        summaries.after(Recorded(row(100, 0.5), {}))
    assert not model_dir.exists()
    model_dir.mkdir()  # training started again
    summaries.after(Recorded(row(200, 0.75), {}))
    summaries.close()
    assert [(s, t) for s, t, _ in points(directory)] == [(100, "accuracy"), (100, "loss"), (200, "accuracy"),
                                                         (200, "loss")]
