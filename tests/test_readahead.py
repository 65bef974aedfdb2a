"""read_ahead: items in order from a background thread, errors raised in their place, the thread gone
once the consumer stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statectl.core.readahead import read_ahead


def numbers(count: int, fail_at: int | None = None) -> Iterator[int]:
    for i in range(count):
        if i == fail_at:
            raise ValueError(f"failed at {i}")
        yield i


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "statectl-read-ahead"]


@given(st.integers(0, 50), st.integers(1, 5))
def test_items_arrive_in_order(count: int, depth: int) -> None:
    assert list(read_ahead(numbers(count), depth)) == list(range(count))
    assert helper_threads() == []


@given(st.integers(1, 30), st.data())
def test_an_error_is_raised_in_its_place(count: int, data: st.DataObject) -> None:
    fail_at = data.draw(st.integers(0, count - 1))
    seen: list[int] = []
    with pytest.raises(ValueError, match=f"failed at {fail_at}"):
        for item in read_ahead(numbers(count, fail_at)):
            seen.append(item)
    assert seen == list(range(fail_at))
    assert helper_threads() == []


def test_stopping_early_ends_the_thread() -> None:
    items = read_ahead(numbers(10_000), depth=2)
    assert [next(items), next(items)] == [0, 1]
    items.close()
    assert helper_threads() == []
