"""Errors that the command line reports as one short message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix: a bad config value, a missing dataset, a wrong path.

    `main.py` and `python -m ssljax.eval` print the message and exit with status 2.
    The message must say what to do, not only what went wrong.
    """


class TrainingDiverged(Exception):
    """Training stopped on non-finite losses or gradients (`config.nonfinite`).

    `main.py` prints the message (the step, the last finite loss, what to try) and exits
    with status 1; the checkpoints hold only finite weights.
    """


class Preempted(Exception):
    """Training saved a checkpoint and stopped on SIGTERM or a preemption notice.

    `main.py` prints the message (how to resume) and exits with status 0.
    """
