"""callables: a fixed session.run made once gives what session.run gives (fed values fetched back,
targets run, string feeds)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from evaluator import callables

v1 = tf.compat.v1


def test_a_callable_gives_what_session_run_gives() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2])
        name = v1.placeholder(tf.string, [])
        total = v1.Variable(0.0, use_resource=True)
        added = total.assign_add(tf.reduce_sum(x), read_value=False)
        length = tf.strings.length(name)
        rows = tf.reduce_sum(x, axis=1)
        session = v1.Session(graph=graph)
        session.run(total.initializer)
    run = callables.make(session, [rows, x, length], [added], [x, name])
    batch = [[1, 2], [3, 4]]  # a list, and float64: converted to the placeholder's type
    sums, echoed, size = run(np.asarray(batch, np.float64), "model.ckpt-1")
    assert sums.tolist() == [3.0, 7.0] and echoed.dtype == np.float32 and echoed.tolist() == batch
    assert size == len("model.ckpt-1") and session.run(total) == 10.0  # the target ran once
    assert [v.tolist() for v in run(batch, b"x")[:2]] == [[3.0, 7.0], batch]
