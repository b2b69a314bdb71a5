"""The one error a fetch raises: its message is the single line a user reads in the pod's
status (the init container's termination message), so it says what failed and what to do."""

from __future__ import annotations


class FetchError(Exception):
    """A fetch that cannot complete; str(error) is one line for the user."""
