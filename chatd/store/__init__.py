"""SQLite persistence: `Store` (in `engine`) runs the operations of `queries` on a writer
and a reader thread, over the tables that `schema` creates and migrates.

    from chatd.store import Store
"""

from chatd.store.engine import Store
from chatd.store.errors import StoreClosed, StoreError, StoreUnavailable

__all__ = ["Store", "StoreClosed", "StoreError", "StoreUnavailable"]
