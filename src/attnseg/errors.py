"""The error policy: which exceptions are the user's, and which are attnseg's bugs.

An :class:`AttnsegError` is raised for bad input that the user can fix (a dataset, an option, a file, a run
directory). The command line prints its message on one line and exits with code 2. Every other exception is a bug
in attnseg: the command line prints the traceback and an ``internal error`` line with the place it was raised,
and exits with code 1. Library errors say what is wrong in library terms ("input_size 250x250: ..."); the command
line maps them to its flags.

Only the standard library is imported here, so every package may use it.
"""

from __future__ import annotations

__all__ = ["AttnsegError"]


class AttnsegError(Exception):
    """Base of every user-facing error; the message names the file, case or option and the problem."""
