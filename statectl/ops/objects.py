"""Placing objects before rows point to them (migrate, import, cp, mv): written and verified, and never
over what may be a worker's write in flight.

A worker writes its object first and its row after, so an object at a target path that no row points
to yet may be one a worker is about to reference. Such an object holding another value is overwritten
only once it is older than IN_FLIGHT_GRACE (then it is an orphan); the same value is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from statectl.core.layout import ObjectURL
from statectl.errors import DataError, StatectlError
from statectl.stores.bucket import ObjectExists, ObjectMissing, Result, modified_or_none
from statectl.stores.retry import TransientFailure
from statectl.stores.store import StateStore

IN_FLIGHT_GRACE = timedelta(hours=1)


class Placed(StrEnum):
    WRITTEN = "written"
    PRESENT = "present"  # the object already held the value: nothing written


class ObjectBusy(DataError):
    """The target holds another value and is recent: maybe a worker's write in flight."""


@dataclass(frozen=True)
class ObjectWrite:
    url: ObjectURL
    text: str  # the value's JSON text (the object's content before compression)
    owned: bool = False  # the row being written already points here: replace it in place
    payload: bytes | None = None  # the bytes to write as they are (already encoded with the codec), if known


PlaceResult = Placed | StatectlError


def place_objects(
    store: StateStore, base: ObjectURL | None, compression: str | None, writes: Sequence[ObjectWrite]
) -> list[PlaceResult]:
    """Write each object unless it already holds its value or may be a worker's; verify what is written.

    Where the store makes create-if-absent writes atomic, one conditional PUT a target (the usual case:
    nothing is there yet) and only targets found occupied are looked at; elsewhere one GET a target
    first. Owned targets are written without a look."""
    results: list[PlaceResult | None] = [None] * len(writes)
    buckets = store.buckets
    owned = [i for i, w in enumerate(writes) if w.owned]
    for index, error in zip(owned, _write(store, writes, owned, compression), strict=True):
        results[index] = error if error is not None else Placed.WRITTEN
    pending = [i for i, w in enumerate(writes) if not w.owned]
    if pending and base is not None and buckets.honours_if_absent(base):
        answers = _write(store, writes, pending, compression, if_absent=True)
        for index, error in zip(pending, answers, strict=True):
            if not isinstance(error, ObjectExists):
                results[index] = error if error is not None else Placed.WRITTEN
        pending = [i for i, e in zip(pending, answers, strict=True) if isinstance(e, ObjectExists)]
    if not pending:
        return _all(results)
    existing = buckets.read_many([writes[i].url for i in pending])
    for index, current in zip(pending, existing, strict=True):
        if isinstance(current, TransientFailure):  # what it holds is unknown: left alone, a re-run looks again
            results[index] = current
    # Unreadable objects compare unequal to every value: replaced only if old.
    differs = [
        i
        for i, e in zip(pending, existing, strict=True)
        if results[i] is None and not isinstance(e, ObjectMissing) and e != writes[i].text
    ]
    now = datetime.now(tz=UTC)
    for index, info in zip(differs, buckets.stat_many([writes[i].url for i in differs]), strict=True):
        if isinstance(info, StatectlError):  # its age is unknown: it may be a worker's write in flight
            results[index] = info
            continue
        when = modified_or_none(info)
        if when is not None and now - when < IN_FLIGHT_GRACE:
            results[index] = ObjectBusy(
                f"object {writes[index].url} holds another value and is recent: a worker may be writing it "
                "(re-run later)"
            )
    for index, current in zip(pending, existing, strict=True):
        if results[index] is None and current == writes[index].text:
            results[index] = Placed.PRESENT
    to_write = [i for i in pending if results[i] is None]
    for index, error in zip(to_write, _write(store, writes, to_write, compression), strict=True):
        results[index] = error if error is not None else Placed.WRITTEN
    return _all(results)


def _all(results: list[PlaceResult | None]) -> list[PlaceResult]:
    done: list[PlaceResult] = []
    for result in results:
        assert result is not None  # every write has its answer
        done.append(result)
    return done


def _write(
    store: StateStore,
    writes: Sequence[ObjectWrite],
    indices: list[int],
    compression: str | None,
    *,
    if_absent: bool = False,
) -> list[Result[None]]:
    chosen = [writes[i] for i in indices]
    return store.buckets.write_many(
        [(w.url, w.text) for w in chosen], compression, if_absent=if_absent, payloads=[w.payload for w in chosen]
    )
