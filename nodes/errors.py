"""The error every InvEdit node raises for bad input: its message says what to change in the graph."""

from __future__ import annotations


class InvEditInputError(ValueError):
    """A user-facing error: the message says what to change in the graph."""


def as_input_error(error: ValueError) -> InvEditInputError:
    """The library's ``ValueError`` as a node error (its message already says what to change)."""
    if isinstance(error, InvEditInputError):
        return error
    translated = InvEditInputError(str(error))
    translated.__cause__ = error
    return translated
