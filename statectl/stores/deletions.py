"""Object deletes in the background: batches sent while the caller goes on, a bounded number at once."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from statectl.core.layout import ObjectURL
from statectl.stores.bucket import Buckets, Result


class Deletions:
    """Batches of objects deleted in the background, at most ``ahead`` batches in flight; each batch's
    answers go to its callback, called on the submitting thread (at a later submit or at drain), so
    that callbacks need no lock. A caller submits a batch only once nothing may reference its objects."""

    def __init__(self, buckets: Buckets, ahead: int) -> None:
        self.buckets = buckets
        self.ahead = ahead
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[list[Result[None]]], Callable[[list[Result[None]]], None]]] = deque()

    def submit(self, urls: Sequence[ObjectURL], answered: Callable[[list[Result[None]]], None]) -> None:
        while len(self._pending) >= self.ahead:
            self._answer_oldest()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.ahead, thread_name_prefix="statectl-delete")
        self._pending.append((self._pool.submit(self.buckets.delete_many, list(urls)), answered))

    def _answer_oldest(self) -> None:
        future, answered = self._pending.popleft()
        answered(future.result())

    def drain(self) -> None:
        """Wait for every batch sent; their callbacks run here. A store error is raised after all are in."""
        first_error: BaseException | None = None
        while self._pending:
            try:
                self._answer_oldest()
            except BaseException as e:  # the others still get their answers counted
                first_error = first_error or e
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if first_error is not None:
            raise first_error
