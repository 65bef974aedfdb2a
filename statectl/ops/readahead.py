"""Items made in a thread of their own, a few ahead of the consumer: CPU work that does not touch the
stores (parsing a snapshot) overlaps the consumer's writes, which wait on the network and on zlib."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from queue import Full, Queue
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items, in order, made by a background thread at most ``depth`` ahead; an error raised while
    making them is raised here, in its place. Stopping early (an error, a break) stops the thread."""
    queue: Queue[object] = Queue(depth)
    stop = threading.Event()

    def offer(thing: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(thing, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as e:  # handed to the consumer, raised there
            offer(_Failed(e))

    thread = threading.Thread(target=produce, name="statectl-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            thing = queue.get()
            if thing is _END:
                return
            if isinstance(thing, _Failed):
                raise thing.error
            yield thing  # type: ignore[misc]  # anything else is an item
    finally:
        stop.set()  # the thread gives up its next offer and ends
        thread.join()
