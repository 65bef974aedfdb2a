"""A lock object in the bucket, so that two prune runs never work at once.

The lock is ``<base>/.statectl~prune.lock`` (a reserved name: never a provider path, never an orphan),
holding JSON: host, pid, token, started, heartbeat. It is created only where nothing is
(``Buckets.write_many(if_absent=True)``: an O_EXCL link locally, a conditional PUT on S3); on a store
that does not honour create-if-absent, it is written after checking and read back after a short
settle, which is best-effort and said so. While held, a thread refreshes the heartbeat; release
deletes it only if it still holds our token.

A lock whose heartbeat is older than the timeout, or whose holder is a dead process on this host,
is stale: one taker wins a create-if-absent marker named after the stale token, deletes the stale
lock and creates its own. Everyone else sees the lock held.

Shards (``prune --shard I/N``): shard I of N holds ``prune.shard-I-of-N.lock``, so the N shards of one
sharding run at once while a shard never runs twice. Different shardings (an unsharded prune is the
one shard of 1) must never run at once, since their shards overlap: having created its own lock, a run
lists the prune locks and backs off (releasing its own) if a live one of another sharding is there;
a stale one it takes over as above. Create, then look: of two runs of different shardings that start
together, the one that looks last sees the other's lock (object stores list what was written before;
a local directory too), so at most one goes on; both may back off, and a later run goes on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from types import TracebackType
from uuid import uuid4

from statectl.core.filters import utcnow
from statectl.core.layout import RESERVED_PREFIX, ObjectURL, reserved_url
from statectl.core.shards import Shard
from statectl.errors import DataError, ExitCode, StatectlError
from statectl.stores.bucket import Buckets, ObjectExists, ObjectMissing
from statectl.stores.retry import TransientFailure

DEFAULT_LOCK_TIMEOUT = timedelta(minutes=10)
SETTLE_SECONDS = 1.0  # best-effort mode: how long to wait before reading our own write back
PRUNE_FAMILY = "prune."
# prune.lock (unsharded: the one shard of 1) and prune.shard-I-of-N.lock; takeover markers do not match.
_PRUNE_LOCK_NAME = re.compile(r"prune\.(?:shard-(\d+)-of-(\d+)\.)?lock")


class LockHeld(StatectlError):
    exit_code = ExitCode.LOCKED


class LockLost(StatectlError):
    """Another run took the lock over while we held it (our heartbeat stalled past the timeout)."""

    exit_code = ExitCode.LOCKED


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str
    started: str  # ISO 8601, UTC
    heartbeat: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), str(data["token"]), data["started"], data["heartbeat"])
        except (ValueError, TypeError, KeyError):
            return None

    @property
    def heartbeat_at(self) -> datetime:
        return datetime.fromisoformat(self.heartbeat)

    def label(self) -> str:
        return f"{self.host}/{self.pid} since {self.started}"


def _process_gone(holder: Holder) -> bool:
    """Only decidable for a holder on this very host."""
    if holder.host != socket.gethostname() or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def prune_lock_name(shard: Shard | None) -> str:
    if shard is None or shard.whole:
        return "prune.lock"
    return f"prune.shard-{shard.index}-of-{shard.count}.lock"


def _sharding_of(name: str) -> int | None:
    """N of a prune lock's name (1 for the unsharded one); None for anything else (a takeover marker)."""
    match = _PRUNE_LOCK_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[2]) if match[2] else 1


class BucketLock:
    """``with BucketLock(buckets, base): ...`` holds the lock for the block (or raises LockHeld)."""

    def __init__(
        self,
        buckets: Buckets,
        base: ObjectURL,
        name: str = "prune.lock",
        *,
        timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
        heartbeat_every: float | None = None,
    ) -> None:
        self.buckets = buckets
        self.url = reserved_url(base, name)
        self.base = base
        self.name = name
        self.sharding = _sharding_of(name)  # N for a prune lock: live locks of another N exclude this one
        self.timeout = timeout
        self.heartbeat_every = heartbeat_every or max(min(timeout.total_seconds() / 4, 60.0), 0.2)
        self.token = uuid4().hex
        self.started = utcnow().isoformat()
        self.notes: list[str] = []
        self.best_effort = False
        self._markers: list[ObjectURL] = []
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    # -- object I/O -------------------------------------------------------------------
    def _text(self) -> str:
        return Holder(socket.gethostname(), os.getpid(), self.token, self.started, utcnow().isoformat()).to_json()

    def _read(self, url: ObjectURL) -> tuple[bool, Holder | None]:
        """(exists, holder); an unreadable lock exists with holder None."""
        result = self.buckets.read_many([url])[0]
        if isinstance(result, ObjectMissing):
            return False, None
        if isinstance(result, TransientFailure):
            raise result  # no answer is no evidence: never taken for an unreadable (stale) lock
        if isinstance(result, StatectlError):
            return True, None
        return True, Holder.from_json(result)

    def _create(self, url: ObjectURL, text: str) -> bool:
        """Create the object only where nothing is; whether we did."""
        if not self.best_effort:
            error = self.buckets.write_many([(url, text)], None, if_absent=True)[0]
            if isinstance(error, ObjectExists):
                return False
            if error is not None:
                raise error
            return True
        if self._read(url)[0]:
            return False
        error = self.buckets.write_many([(url, text)], None)[0]
        if error is not None:
            raise error
        time.sleep(SETTLE_SECONDS)  # a concurrent writer's PUT lands in this window: the last one wins
        exists, holder = self._read(url)
        return exists and holder is not None and holder.token == json.loads(text)["token"]

    # -- acquire / release ------------------------------------------------------------
    def acquire(self) -> None:
        self.best_effort = not self.buckets.honours_if_absent(self.base)
        if self.best_effort:
            self.notes.append(
                f"the lock is best-effort: {self.base.protocol}:// does not honour create-if-absent writes"
            )
        for _ in range(3):
            if self._create(self.url, self._text()):
                self._held = True
                self._start_heartbeat()
                try:
                    self._exclude_other_shardings()
                except BaseException:
                    self.release()
                    raise
                return
            exists, holder = self._read(self.url)
            if not exists:
                continue  # released meanwhile: try again
            stale_reason = self._stale_reason(self.url, holder)
            if stale_reason is None:
                assert holder is not None
                raise LockHeld(
                    f"another prune holds the lock {self.url}: {holder.label()}, last heartbeat {holder.heartbeat} "
                    f"(stale after --lock-timeout {_seconds(self.timeout)})"
                )
            self._take_over(self.url, self.name, holder, stale_reason)
        raise LockHeld(f"could not take the lock {self.url}: other runs keep taking it")

    def _exclude_other_shardings(self) -> None:
        """With our lock created: back off if a live lock of another sharding is there (a stale one is
        taken over, so that its holder, should it wake, stops at its next heartbeat)."""
        if self.sharding is None:
            return
        root = len(self.base.path) + 1
        others = []
        for listed in self.buckets.iter_listing(self.base, RESERVED_PREFIX + PRUNE_FAMILY):
            name = listed.path[root:].removeprefix(RESERVED_PREFIX)
            sharding = _sharding_of(name)
            if sharding is not None and sharding != self.sharding:
                others.append(name)
        for name in others:
            url = reserved_url(self.base, name)
            exists, holder = self._read(url)
            if not exists:
                continue
            stale_reason = self._stale_reason(url, holder)
            if stale_reason is None:
                who = holder.label() if holder is not None else "an unknown holder"
                raise LockHeld(
                    f"a prune of another sharding holds the lock {url}: {who} (prunes sharded differently, "
                    "or sharded and unsharded, never run at once)"
                )
            self._take_over(url, name, holder, stale_reason)

    def _stale_reason(self, url: ObjectURL, holder: Holder | None) -> str | None:
        if holder is None:
            info = self.buckets.stat_many([url])[0]
            modified = None if isinstance(info, StatectlError) else info.modified
            if modified is not None and utcnow() - modified < self.timeout:
                return None
            return "an unreadable lock"
        if _process_gone(holder):
            return "its process is gone"
        try:
            age = utcnow() - holder.heartbeat_at
        except (ValueError, TypeError):
            return "a lock with no readable heartbeat"
        if age >= self.timeout:
            return f"no heartbeat for {_seconds(age)}"
        return None

    def _take_over(self, url: ObjectURL, name: str, holder: Holder | None, reason: str) -> None:
        """One taker per stale lock: whoever creates the marker named after its token, and deletes it."""
        stale_token = holder.token if holder is not None else "unreadable"
        marker = reserved_url(self.base, f"{name}.takeover-{stale_token}")
        who = holder.label() if holder is not None else "an unknown holder"
        if not self._create(marker, self._text()):
            if self._gone_soon(url, stale_token):
                return  # the other taker deleted it: it is no obstacle any more
            raise LockHeld(f"another prune is taking over the stale lock {url} held by {who}")
        self._markers.append(marker)
        _, again = self._read(url)
        if (again.token if again is not None else "unreadable") == stale_token:
            self._delete(url)
        which = "" if url == self.url else f" of another sharding ({name})"
        self.notes.append(f"took over a stale lock{which} held by {who} ({reason})")

    def _gone_soon(self, url: ObjectURL, stale_token: str) -> bool:
        """Whether the stale lock (that token) is deleted within a few settles, by its other taker."""
        for _ in range(3):
            exists, holder = self._read(url)
            if not exists or (holder is not None and holder.token != stale_token):
                return True
            time.sleep(SETTLE_SECONDS)
        return False

    def _delete(self, url: ObjectURL) -> None:
        error = self.buckets.delete_many([url])[0]
        if error is not None:
            raise DataError(f"could not delete the lock object {url}: {error.message}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self._held:
            return
        self._held = False
        try:
            _, holder = self._read(self.url)
            if holder is not None and holder.token == self.token:
                self._delete(self.url)
            for marker in self._markers:
                self._delete(marker)
        except StatectlError as e:
            self.notes.append(f"could not release the lock {self.url} ({e.message}); it goes stale by itself")

    # -- while held -------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="statectl-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                _, holder = self._read(self.url)
                if holder is None or holder.token != self.token:
                    self._lost = "another run took the lock over (our heartbeat stalled past --lock-timeout)"
                    return
                error = self.buckets.write_many([(self.url, self._text())], None)[0]
                if error is not None:
                    raise error
            except StatectlError as e:
                self.notes.append(f"heartbeat failed: {e.message}")  # retried at the next beat

    def check(self) -> None:
        """Between batches: stop if the lock is no longer ours."""
        if self._lost:
            raise LockLost(self._lost)

    def __enter__(self) -> BucketLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"
