"""Errors that the command line reports as one short message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix: a bad config value, a missing dataset, a wrong path.

    `main.py` and `python -m ssljax.eval` print the message and exit with status 2.
    The message must say what to do, not only what went wrong.
    """
