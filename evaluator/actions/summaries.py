"""TensorBoard summaries: each evaluated checkpoint's metrics as scalars at its step, in event files
beside training's (by default MODEL_DIR/eval, Estimator's convention, so `tensorboard --logdir
MODEL_DIR` shows train and eval together).

One point per step and tag, also across `kill -9` and restarts: at start the event files already
there are read, and the points recorded rows lack there are written (the rows are the truth).
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable
from typing import Any

from evaluator.actions import Recorded
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


def written(directory: str) -> set[tuple[int, str]]:
    """(step, tag) of every scalar in the event files of `directory` (a truncated last record, from
    a process killed while writing, ends that file's reading)."""
    import tensorflow as tf
    from tensorflow.python.util import deprecation  # summary_iterator is the reader TensorBoard's docs give

    found: set[tuple[int, str]] = set()
    with deprecation.silence():
        for path in sorted(glob.glob(os.path.join(directory, EVENTS))):
            try:
                for event in tf.compat.v1.train.summary_iterator(path):
                    for value in event.summary.value:
                        found.add((event.step, value.tag))
            except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
                continue
    return found


class Summaries:
    """Writes each recorded row's metrics to TensorBoard event files in `directory`."""

    name = "summaries"

    def __init__(self, directory: str, log: Any) -> None:
        self.directory = directory
        self.log = log
        self._writer: Any = None
        self._written: set[tuple[int, str]] = set()

    def catch_up(self, rows: Iterable[Evaluation]) -> None:
        self._written = written(self.directory)
        missing = 0
        for row in rows:
            missing += self._write(row)
        if missing:
            self.log.info("summaries filled in from the database", directory=self.directory, points=missing)

    def after(self, recorded: Recorded) -> None:
        self._write(recorded.evaluation)

    def after_many(self, recorded: list[Recorded]) -> None:
        """A batch's points, flushed to the event file once."""
        for one in recorded:
            self._write(one.evaluation, flush=False)
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, row: Evaluation, flush: bool = True) -> int:
        """The row's points that the event files lack; returns how many."""
        if row.status is not Status.OK or row.step is None:
            return 0
        points = {tag: value for tag, value in tags(row).items() if (row.step, tag) not in self._written}
        if not points:
            return 0
        import tensorflow as tf

        if self._writer is None:
            os.makedirs(self.directory, exist_ok=True)
            self._writer = tf.summary.create_file_writer(self.directory)
        with self._writer.as_default(step=row.step):
            for tag, value in points.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_scalar_metadata())
        if flush:
            self._writer.flush()
        self._written.update((row.step, tag) for tag in points)
        return len(points)
