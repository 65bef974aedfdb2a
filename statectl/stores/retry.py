"""Transient failures of object stores (throttling, 5xx, dropped connections, timeouts), retried in one place.

Every request statectl makes to an object store (:mod:`statectl.stores.bucket`'s reads, stats, writes,
deletes and probes, :mod:`statectl.stores.listing`'s listing pages) goes through :func:`retry_async` or
:func:`retry_sync`: an answer that may be different on another try is retried, with exponential backoff and
jitter, up to ATTEMPTS tries in all; any other error is raised at once (404, 403, 412, a bad request, a store
that refuses connections). A request still failing transiently after its last try raises
:class:`TransientFailure`, which batch calls return as that object's error: the operation reports the batch
(exit 8) and a re-run finishes the job.

Below statectl, botocore retries every S3 request itself (mode and attempts as the connection's
``config_kwargs`` say, as on the workers; by default 5 tries, "legacy" mode) and answers the rest. s3fs wraps
its calls in a retry loop of its own as well, nested twice for a GET: a GET timing out every time was sent 125
times over 5 minutes at a 1 s read timeout. statectl turns that loop off on its S3 filesystems
(``statectl.stores.bucket.own_retries``), so a request is sent at most ATTEMPTS x botocore's tries, each
bounded by the connection's read timeout (``config_kwargs.read_timeout``; s3fs's 15 s if it sets none).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from statectl.errors import ExitCode, StatectlError

T = TypeVar("T")

log = logging.getLogger(__name__)

# Four tries of a request in all. Each try is itself botocore's tries (5 by default), so a request is sent up to
# 20 times across up to a minute of pauses before its batch is reported: that rides out a burst of throttling or
# a store's restart, while a store that stays broken costs minutes, not hours.
ATTEMPTS = 4
# The pause after try n: half fixed, half random (clients throttled together spread out), from BASE_DELAY_S
# doubling each time: 0.25-0.5 s, 0.5-1 s, 1-2 s; never more than MAX_DELAY_S, should ATTEMPTS grow.
BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0

# Answers that another try may change: S3 error codes (and botocore's stand-in of the bare status of a HEAD) ...
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "XAmzContentSHA256Mismatch",  # the body arrived damaged (s3fs retried it too)
        "500",
        "502",
        "503",
        "504",
    }
)
# ... HTTP statuses (GCS, Azure, plain HTTP clients) ...
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# ... and exceptions raised when a connection broke mid-request or an answer came back cut or garbled, by class
# name (botocore, aiohttp, azure-core): the request reached the store, its answer did not come back whole.
TRANSIENT_TYPES = frozenset(
    {
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "IncompleteRead",
        "ResponseParserError",  # throttling answers with a broken XML body (see s3fs issue 484)
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServiceResponseError",
    }
)
# A store that cannot be connected to at all is down, not busy: botocore has already tried it, statectl says
# so at once (exit 5).
UNREACHABLE_TYPES = frozenset({"ConnectTimeoutError", "ConnectionTimeoutError", "ClientConnectorDNSError"})
# The store's final word about this object.
FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class TransientFailure(StatectlError):
    """A request failed transiently on every try: the store is there but throttling or dropping requests.
    Returned as that object's error by batch calls; the operation reports the batch and a re-run goes on."""

    exit_code = ExitCode.PARTIAL


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and the errors it was raised from (s3fs raises OSError from botocore's ClientError, botocore
    its own errors from aiohttp's, aiohttp from the socket's)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _answer_is_transient(error: BaseException) -> bool:
    response = getattr(error, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
            return True
    for attribute in ("status_code", "status", "code"):  # azure-core, aiohttp, gcsfs
        value = getattr(error, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value in TRANSIENT_STATUSES:
            return True
    return False


def is_transient(error: BaseException) -> bool:
    """Whether another try of the request may succeed (see the sets above)."""
    if isinstance(error, (StatectlError, *FINAL)):
        return False
    links = list(_chain(error))
    for link in links:
        if isinstance(link, (ConnectionRefusedError, socket.gaierror)) or _names(link) & UNREACHABLE_TYPES:
            return False
    for link in links:
        if isinstance(link, (TimeoutError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return True  # TimeoutError: socket, asyncio, aiohttp and fsspec timeouts alike
        if _names(link) & TRANSIENT_TYPES or _answer_is_transient(link):
            return True
    return False


def describe(error: BaseException) -> str:
    """The first line of an error's message, or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def pause(attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): exponential, half of it random."""
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _given_up(what: str, error: BaseException) -> TransientFailure:
    return TransientFailure(f"{what}: {describe(error)} (still failing after {ATTEMPTS} tries; re-run to finish)")


def _retrying(what: str, attempt: int, error: Exception) -> bool:
    """Whether to try again after this failure (raises TransientFailure once the tries are spent)."""
    if not is_transient(error):
        return False
    if attempt >= ATTEMPTS:
        raise _given_up(what, error) from error
    log.debug("%s: try %d of %d failed (%s); trying again", what, attempt, ATTEMPTS, describe(error))
    return True


async def retry_async(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``await call()``, tried again on transient failures (``what`` names the object or listing)."""
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as e:
            if not _retrying(what, attempt, e):
                raise
        await asyncio.sleep(pause(attempt))
        attempt += 1


def retry_sync(call: Callable[[], T], what: str) -> T:
    """``call()``, tried again on transient failures (for synchronous filesystems and fsspec's sync wrappers)."""
    attempt = 1
    while True:
        try:
            return call()
        except Exception as e:
            if not _retrying(what, attempt, e):
                raise
        time.sleep(pause(attempt))
        attempt += 1


__all__ = [
    "ATTEMPTS",
    "TransientFailure",
    "describe",
    "is_transient",
    "retry_async",
    "retry_sync",
]
