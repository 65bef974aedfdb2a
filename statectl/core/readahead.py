"""Items made in a thread of their own, a few ahead of the consumer: work that waits on something else
(parsing a snapshot, listing a folder of a bucket) overlaps the consumer's own."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from queue import Full, Queue
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """A background thread, started at once, that makes the items at most ``depth`` ahead of the
    consumer. Iterating yields them in order; an error raised while making them is raised in its place.
    ``close()`` (also when iteration ends early) stops the thread."""

    def __init__(self, items: Iterable[T], depth: int = 2) -> None:
        self._queue: Queue[object] = Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name="statectl-read-ahead")
        self._thread.daemon = True
        self._thread.start()

    def _offer(self, thing: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(thing, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
            self._offer(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._offer(_Failed(e))

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                thing = self._queue.get()
                if thing is _END:
                    return
                if isinstance(thing, _Failed):
                    raise thing.error
                yield thing  # type: ignore[misc]  # anything else is an item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()  # the thread gives up its next offer and ends
        self._thread.join()


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items, in order, made by a background thread at most ``depth`` ahead; an error raised while
    making them is raised here, in its place. Stopping early (an error, a break) stops the thread."""
    yield from ReadAhead(items, depth)


def chained_ahead(sources: Iterable[Callable[[], Iterable[T]] | list[T]], ahead: int, depth: int = 2) -> Iterator[T]:
    """The items of each source in turn, as one stream, while up to ``ahead`` sources after the current
    one are already being made (each in its own thread, at most ``depth`` items ahead): memory stays at
    ``(ahead + 1) * depth`` items. A source that is a list is already made: it takes no thread.
    ``ahead`` 0: one source after the other, no threads."""
    if ahead <= 0:
        for source in sources:
            yield from (source if isinstance(source, list) else source())
        return
    pending: deque[ReadAhead[T] | list[T]] = deque()
    makers = iter(sources)
    exhausted = False
    try:
        while True:
            while len(pending) <= ahead and not exhausted:
                maker = next(makers, None)
                exhausted = maker is None
                if maker is not None:
                    pending.append(maker if isinstance(maker, list) else ReadAhead(_deferred(maker), depth))
            if not pending:
                return
            yield from pending.popleft()
    finally:
        for waiting in pending:
            if isinstance(waiting, ReadAhead):
                waiting.close()


def _deferred(make: Callable[[], Iterable[T]]) -> Iterator[T]:
    """``make()``'s items, with ``make`` itself called in the producing thread."""
    yield from make()
