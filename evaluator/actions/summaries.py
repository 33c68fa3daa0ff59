"""TensorBoard summaries: each evaluated checkpoint's metrics as scalars at its step, in event files
beside training's (by default MODEL_DIR/eval, Estimator's convention, so `tensorboard --logdir
MODEL_DIR` shows train and eval together).

One point per step and tag, also across `kill -9`, restarts and a pool of workers: each point is
written by the worker that recorded its row; at start the event files already there are read, and
the points recorded rows lack there are written (the rows are the truth). Both are done under the
store's lock on the directory, flushed before it is let go, and a writer that takes the lock first
reads the event files that appeared since it last looked (another worker's start-up fill-in): no
worker writes a point another has written.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from evaluator import checkpoints
from evaluator.actions import Recorded, Shared
from evaluator.errors import StoreWriteError
from evaluator.evaluation import EXAMPLES, Evaluation, Status

EVENTS = "events.out.tfevents.*"


@functools.cache
def _scalar_metadata() -> bytes:
    """What TensorBoard's scalars plugin marks its points with (as tf.summary.scalar would, without
    needing the tensorboard package in the daemon)."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()



def tags(evaluation: Evaluation) -> dict[str, float]:
    """The scalars of a row: `accuracy`, `loss`... with one validation set; `<set>/<metric>` with several."""
    metrics = evaluation.metrics or {}
    if not metrics:  # rows from before metrics: the columns
        return {name: value for name in ("accuracy", "loss") if (value := getattr(evaluation, name)) is not None}
    one = len(metrics) == 1
    return {(name if one else f"{dataset}/{name}"): float(value)
            for dataset, values in metrics.items() for name, value in values.items() if name != EXAMPLES}


def written(directory: str, paths: Iterable[str] | None = None) -> set[tuple[int, str]]:
    """(step, tag) of every scalar in the event files of `directory` (or in `paths`); a truncated
    last record, from a process killed while writing, ends that file's reading."""
    import tensorflow as tf
    from tensorflow.python.util import deprecation  # summary_iterator is the reader TensorBoard's docs give

    found: set[tuple[int, str]] = set()
    with deprecation.silence():
        for path in sorted(glob.glob(os.path.join(directory, EVENTS)) if paths is None else paths):
            try:
                for event in tf.compat.v1.train.summary_iterator(path):
                    for value in event.summary.value:
                        found.add((event.step, value.tag))
            except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError):
                continue
    return found


class Summaries:
    """Writes each recorded row's metrics to TensorBoard event files in `directory`."""

    name = "summaries"

    def __init__(self, directory: str, log: Any, shared: Shared, model_dir: str | None = None) -> None:
        self.directory = directory
        #: The model directory, if `directory` may lie in it: it is not made again once removed.
        self.model_dir = model_dir
        self.log = log
        self.shared = shared
        self._writer: Any = None
        self._written: set[tuple[int, str]] = set()
        #: The event files read (or written by this worker) so far.
        self._seen: set[str] = set()
        #: Rows whose points wait for the lock (the database was away when they came).
        self._deferred: list[Evaluation] = []

    def catch_up(self, rows: Iterable[Evaluation]) -> None:
        rows = list(rows)
        with self._exclusive():
            missing = sum(self._write(row, flush=False) for row in rows)
        if missing:
            self.log.info("summaries filled in from the database", directory=self.directory, points=missing)

    def after(self, recorded: Recorded) -> None:
        self.after_many([recorded])

    def after_many(self, recorded: list[Recorded]) -> None:
        """A batch's points (and any deferred), flushed to the event file once, under the lock."""
        self._deferred.extend(one.evaluation for one in recorded)
        rows, self._deferred = self._deferred, []
        try:
            with self._exclusive():
                for row in rows:
                    self._write(row, flush=False)
        except (StoreWriteError, FileNotFoundError):
            self._deferred = rows  # written with the next batch, or at close (the database, or the model directory, back)
            raise

    def close(self) -> None:
        try:
            if self._deferred:
                self.after_many([])
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The lock on the directory, the event files that appeared meanwhile read first, and what
        was written flushed before it is let go."""
        with self.shared.exclusive(f"summaries\0{self.directory}"):
            self._read_new_files()
            try:
                yield
            finally:
                if self._writer is not None:
                    self._writer.flush()
                    self._seen.update(glob.glob(os.path.join(self.directory, EVENTS)))

    def _read_new_files(self) -> None:
        new = [path for path in glob.glob(os.path.join(self.directory, EVENTS)) if path not in self._seen]
        if new:
            self._written |= written(self.directory, new)
            self._seen.update(new)

    def _write(self, row: Evaluation, flush: bool = True) -> int:
        """The row's points that the event files lack; returns how many."""
        if row.status is not Status.OK or row.step is None:
            return 0
        points = {tag: value for tag, value in tags(row).items() if (row.step, tag) not in self._written}
        if not points:
            return 0
        import tensorflow as tf

        if self._writer is None:
            checkpoints.make_dirs(self.directory, self.model_dir or self.directory)
            self._writer = tf.summary.create_file_writer(self.directory)
        with self._writer.as_default(step=row.step):
            for tag, value in points.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_scalar_metadata())
        if flush:
            self._writer.flush()
        self._written.update((row.step, tag) for tag in points)
        return len(points)
