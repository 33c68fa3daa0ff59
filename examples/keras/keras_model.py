"""The digits network in Keras 3, three ways (Sequential, functional, subclassed), with layers left
to Keras' automatic names: the evaluator matches checkpoints by object structure, not by names."""

from __future__ import annotations

import keras

PIXELS = 64
CLASSES = 10
HIDDEN_UNITS = 32


class Digits(keras.Model):
    """The subclassed form."""

    def __init__(self, hidden_units: int = HIDDEN_UNITS) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(hidden_units, activation="relu")
        self.logits = keras.layers.Dense(CLASSES)

    def call(self, features, training=False):  # type: ignore[no-untyped-def]
        return self.logits(self.hidden(features))


def build(kind: str = "sequential", hidden_units: int = HIDDEN_UNITS) -> keras.Model:
    """The model, built (its variables exist); returns logits."""
    if kind == "sequential":
        return keras.Sequential([keras.Input((PIXELS,)), keras.layers.Dense(hidden_units, activation="relu"),
                                 keras.layers.Dense(CLASSES)])
    if kind == "named":  # layers named by hand: matched the same way (names play no part)
        return keras.Sequential([keras.Input((PIXELS,)), keras.layers.Dense(hidden_units, activation="relu", name="hidden"),
                                 keras.layers.Dense(CLASSES, name="logits")], name="digits")
    if kind == "functional":
        inputs = keras.Input((PIXELS,))
        hidden = keras.layers.Dense(hidden_units, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))
    if kind == "subclassed":
        model = Digits(hidden_units)
        model(keras.ops.zeros((1, PIXELS)))  # creates the variables
        return model
    raise ValueError(f"unknown model kind {kind!r}: sequential, named, functional or subclassed")
