"""The evaluator's task for the digits example: `evaluator watch DIR --task examples/digits/task.py:TASK`."""

from __future__ import annotations

import digits_data
import digits_model


class DigitsTask:
    """The same inference code as the trainer, and the held-out fifth of the digits."""

    batch_size = 512

    def inference(self, features):  # type: ignore[no-untyped-def]
        return digits_model.inference(features)

    def validation_data(self):  # type: ignore[no-untyped-def]
        return digits_data.validation()


TASK = DigitsTask()
