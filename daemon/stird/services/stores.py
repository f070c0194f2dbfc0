"""Errors shared by the key-value store adapters and the services that use them."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The shared key-value store could not be reached, timed out or answered an error.

    Services treat it as "no shared state right now" and carry on locally."""
