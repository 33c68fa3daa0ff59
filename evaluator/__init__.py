"""evaluator: continuous evaluation of TensorFlow training checkpoints, with EMA weights, into SQL."""

__version__ = "0.1.0"
