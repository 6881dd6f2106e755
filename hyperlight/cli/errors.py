"""The error every command raises for a command line that cannot be run as given."""

from __future__ import annotations


class UsageError(Exception):
    """A command line that cannot be run as given (reported in one line, exit status 2)."""
