"""`python -m evaluator` is `evaluator`."""

from evaluator.cli import main

main()
