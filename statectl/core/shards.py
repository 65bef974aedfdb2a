"""Shards: ``--shard I/N`` splits prune, check and migrate over N runs that never handle the same thing.

Shard I of N owns the task state of the dag_ids whose stable hash (the first 8 bytes of the SHA-256 of
the dag_id, big-endian, modulo N) is I, and the objects under those dags' folders in the base path;
asset state (rows and the ``assets/`` folder) is shard 0's. An object is placed by the first segment of
its path, unquoted as the provider quotes a dag_id (for every dag_id Airflow allows, the segment is the
dag_id itself), so an orphan of a dag that has no rows left still belongs to exactly one shard, and the
union of the N shards is exactly an unsharded run.

A dag named like the assets folder shares that folder at the top of the bucket, so it is shard 0's too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import unquote

from statectl.core.layout import ASSETS_FOLDER
from statectl.errors import UsageError

_SPELLING = re.compile(r"(\d+)/(\d+)")


def shard_of_dag(dag_id: str, count: int) -> int:
    """The shard, of ``count``, that owns a dag's task state and objects."""
    if dag_id == ASSETS_FOLDER:
        return 0
    digest = hashlib.sha256(dag_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_of_path(relative: str, count: int) -> int:
    """The shard, of ``count``, that owns an object at this path relative to the base path."""
    return shard_of_dag(unquote(relative.split("/", 1)[0]), count)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` with 0 <= I < N, as ``--shard`` takes it."""
        match = _SPELLING.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"--shard takes I/N, e.g. 0/4 (shard 0 of 4), not {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard {text}: I/N needs N >= 1 and 0 <= I < N")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        """0/1: the one shard that is everything."""
        return self.count == 1

    @property
    def owns_assets(self) -> bool:
        return self.index == 0

    def owns_dag(self, dag_id: str) -> bool:
        return shard_of_dag(dag_id, self.count) == self.index

    def owns_path(self, relative: str) -> bool:
        return shard_of_path(relative, self.count) == self.index
