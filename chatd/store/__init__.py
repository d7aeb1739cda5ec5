"""Persistence. `StoreAPI` (in `api`) is what the service asks of a store. The default is
SQLite: `Store` (in `engine`) runs the operations of `queries` on a writer and a reader
thread, over the tables that `schema` creates and migrates. `chatd.store.postgres` is the
same on PostgreSQL, imported only when configured.

    from chatd.store import Store
"""

from typing import TYPE_CHECKING

from chatd.store.api import StoreAPI
from chatd.store.engine import Store
from chatd.store.errors import StoreClosed, StoreError, StoreUnavailable

if TYPE_CHECKING:
    # mypy proves the SQLite store satisfies the interface.
    _sqlite_is_a_store: type[StoreAPI] = Store

__all__ = ["Store", "StoreAPI", "StoreClosed", "StoreError", "StoreUnavailable"]
