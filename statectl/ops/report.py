"""The one shape of every operation.

An operation is a plain function ``run_x(store, options, *, dry_run=False, confirm=None, progress=None)``
that plans, asks ``confirm(plan)`` (None: no question), executes and returns a report. A report
has ``as_dict()`` (what ``-o json`` prints) and ``exit_code``. Read-only operations take no
``dry_run`` or ``confirm``. A declined confirmation is not an error: the report says nothing changed
and its exit code is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from statectl.errors import ExitCode

PlanT = TypeVar("PlanT")


class Progress(Protocol):
    """Told what was done: ``progress(phase, advance)`` after each step, and once
    ``progress(phase, 0, total=N)`` when the work of a phase is known in advance."""

    def __call__(self, phase: str, advance: int, /, total: int | None = None) -> None: ...


class Report(Protocol):
    @property
    def exit_code(self) -> ExitCode: ...

    def as_dict(self) -> dict[str, Any]: ...


Confirm = Callable[[PlanT], bool]

NOT_CONFIRMED = "not confirmed: nothing changed"


def no_progress(phase: str, advance: int, /, total: int | None = None) -> None:
    """The progress callback of an operation nobody watches."""
