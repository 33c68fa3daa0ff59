"""A fixed `session.run` (the same fetches, targets and feeds every time) made once, run many times.

Every `session.run` works out its fetches and feeds in Python again (0.1-0.2 ms; `make_callable`
with feeds hands them to `session.run` too), which a backlog of small checkpoints pays twice per
checkpoint: the restore and each validation batch. A callable TensorFlow builds from
`CallableOptions` (TF_SessionMakeCallable, what tf.keras' graph-mode backend ran on) does that work
once. Feeds are numpy arrays of the fed tensors' types; the result is the fetches' values, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

Run = Callable[..., list[Any]]


def make(session: tf.compat.v1.Session, fetches: list[tf.Tensor], targets: list[Any],
         feeds: list[tf.Tensor]) -> Run:
    """A callable taking one value per tensor of `feeds` and returning the values of `fetches`
    (running `targets`, operations or their names, for their effect)."""
    from tensorflow.core.protobuf import config_pb2

    dtypes = [feed.dtype.as_numpy_dtype for feed in feeds]
    make_from_options = getattr(session, "_make_callable_from_options", None)
    if make_from_options is None:  # a TensorFlow without it: session.run, as before
        return _plain(session, fetches, targets, feeds)
    # A fetch that is also fed (a metric of the labels themselves) is the value fed, as session.run
    # gives it; a callable refuses to fetch what it feeds.
    fed = [feed.name for feed in feeds]
    echoed = {index: fed.index(fetch.name) for index, fetch in enumerate(fetches) if fetch.name in fed}
    options = config_pb2.CallableOptions()
    options.feed.extend(fed)
    options.fetch.extend(fetch.name for index, fetch in enumerate(fetches) if index not in echoed)
    options.target.extend(target if isinstance(target, str) else target.name for target in targets)
    run = make_from_options(options)

    def call(*values: Any) -> list[Any]:
        arrays = [_as(value, dtype) for value, dtype in zip(values, dtypes)]
        results = iter(run(*arrays))
        return [arrays[echoed[index]] if index in echoed else next(results) for index in range(len(fetches))]

    return call


def _as(value: Any, dtype: Any) -> Any:
    if dtype is object:  # strings: numpy's own text or bytes arrays
        return np.asarray(value)
    return np.asarray(value, dtype=dtype)


def _plain(session: tf.compat.v1.Session, fetches: list[tf.Tensor], targets: list[Any], feeds: list[tf.Tensor]) -> Run:
    def call(*values: Any) -> list[Any]:
        return list(session.run([*fetches, *targets], dict(zip(feeds, values)))[: len(fetches)])

    return call
