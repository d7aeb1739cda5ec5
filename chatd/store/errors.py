"""What the store raises to its callers."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used (a newer schema), or a commit failed."""


class StoreClosed(StoreError):
    """A write or read after `Store.aclose`."""
