"""One Airflow deployment's state store: its configuration, metastore and buckets, opened lazily.

Ordering rules every operation follows (the provider's, so that a crash at any point leaves
every value readable):
- write: the object is written and verified before the row points to it;
- remove: the row goes first (only if it still holds the value read), then its object;
- nothing outside the configured base path is ever deleted.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from statectl.core import codec, layout
from statectl.core.codec import Location, StoredValue
from statectl.core.config import DEFAULT_CONCURRENCY, Config
from statectl.core.layout import ObjectURL
from statectl.core.scopes import AssetScope, Scope
from statectl.errors import ConfigError, DataError
from statectl.stores.metastore import Metastore

if TYPE_CHECKING:  # imported on first use: fsspec and asyncio are start-up that ls never needs
    from statectl.stores.bucket import Buckets


class StateStore:
    """The state store of one Airflow deployment, as its configuration describes it."""

    def __init__(self, config: Config, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.config = config
        self.concurrency = concurrency

    @cached_property
    def metastore(self) -> Metastore:
        return Metastore(self.config.sql_alchemy_conn)

    @cached_property
    def buckets(self) -> Buckets:
        from statectl.stores.bucket import Buckets

        return Buckets(self.concurrency)

    @cached_property
    def base(self) -> ObjectURL | None:
        path = self.config.base_path
        return None if path is None else layout.parse_base_path(path)

    def require_base(self) -> ObjectURL:
        if self.base is None:
            raise ConfigError("no [common.io] state_store_objectstorage_path is configured (set it, or pass --path)")
        return self.base

    def check_reachable(self, *bases: ObjectURL | None) -> None:
        """Before a long operation changes anything: the tables exist and each bucket answers."""
        self.metastore.check_schema()
        for base in dict.fromkeys(b for b in bases if b is not None):
            self.buckets.probe(base)

    def close(self) -> None:
        if "metastore" in self.__dict__:
            self.metastore.close()

    def resolve(self, scope: Scope) -> Scope:
        if isinstance(scope, AssetScope):
            return self.metastore.resolve_asset(scope)
        return scope

    def object_url_for(self, scope: Scope, key: str) -> ObjectURL:
        """Where the provider puts (scope, key) under the current configuration."""
        return layout.object_url(self.require_base(), scope, key, self.config.compression)

    def deletable(self, ref: str) -> ObjectURL | str:
        """The object URL of a ref if statectl may delete it (strictly under the base), else the reason."""
        try:
            return layout.require_under_base(ref, self.base)
        except DataError as e:
            return e.message

    def decode(self, stored: StoredValue) -> tuple[Any, ObjectURL | None]:
        """The value a worker with the backend reads for a stored column, and the object it read."""
        if stored.location is Location.PLAIN:
            return codec.decode_json(stored.text, "the row"), None
        assert stored.ref is not None
        if stored.location is Location.INLINE:
            return codec.decode_json(stored.ref, "the row's inline ref"), None
        url = layout.require_readable(stored.ref, self.base)
        text = self.buckets.read_text(url)
        return codec.decode_json(text, f"object {url}"), url
