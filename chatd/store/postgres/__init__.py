"""PostgreSQL persistence for cluster mode (`[store] backend = "postgresql"`): `PgStore`
(in `engine`) runs the operations of `queries` on a writer and a reader thread, over the
tables that `schema` creates and migrates. Imported only when configured: it needs
psycopg (`pip install 'chatd[cluster]'`).

    from chatd.store.postgres import PgStore
"""

from typing import TYPE_CHECKING

from chatd.store.postgres.engine import PgStore

if TYPE_CHECKING:
    from chatd.store.api import StoreAPI

    # mypy proves the PostgreSQL store satisfies the interface.
    _postgres_is_a_store: type[StoreAPI] = PgStore

__all__ = ["PgStore"]
