"""Background object deletes (statectl.stores.deletions) on real files: bounded, answered in order."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from statectl.core.layout import ObjectURL
from statectl.stores.bucket import Buckets, Result
from statectl.stores.deletions import Deletions


def _answer(answered: list[tuple[int, list[Result[None]]]], number: int, errors: list[Result[None]]) -> None:
    answered.append((number, errors))


def test_batches_are_answered_in_order_with_few_in_flight(tmp_path: Path) -> None:
    base = ObjectURL.parse(tmp_path.as_uri())
    batches = []
    for b in range(5):
        urls = []
        for i in range(10):
            (tmp_path / f"{b}-{i}").write_text("x")
            urls.append(base.child(f"{b}-{i}"))
        batches.append(urls)
    batches[4].append(base.child("never-there"))  # a missing object counts as deleted
    answered: list[tuple[int, list[Result[None]]]] = []
    deletions = Deletions(Buckets(), ahead=2)
    for number, urls in enumerate(batches):
        deletions.submit(urls, partial(_answer, answered, number))
        assert number - len(answered) < 2, "no more than `ahead` batches unanswered"
    deletions.drain()
    assert [number for number, _ in answered] == [0, 1, 2, 3, 4]
    assert all(error is None for _, errors in answered for error in errors)
    assert [len(errors) for _, errors in answered] == [10, 10, 10, 10, 11]
    assert not list(tmp_path.iterdir())
