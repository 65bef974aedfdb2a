"""Output formats. stdout carries only results; messages go to stderr."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from json.encoder import encode_basestring  # C-accelerated when the _json module is there (CPython)
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from statectl.ops.report import Progress, Report


class Output(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    plain = "plain"


def default_output(stream: TextIO) -> Output:
    return Output.table if stream.isatty() else Output.plain


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def err(message: str) -> None:
    print(message, file=sys.stderr)


def warn(message: str) -> None:
    err(f"statectl: warning: {message}")


def write_records(
    records: Iterable[dict[str, Any]],
    columns: Sequence[str],
    fmt: Output,
    out: TextIO,
    title: str | None = None,
    *,
    header: bool = False,
) -> int:
    """Stream records in the chosen format with flat memory; return how many were written.

    ``header``: plain output starts with a line naming the columns (reports read by people in
    cron mail); lists that scripts cut into fields (ls) have none."""
    count = 0

    if fmt is Output.json:
        out.write("[")
        for count, record in enumerate(records, 1):
            out.write(("\n" if count == 1 else ",\n") + dumps(record))
        out.write("\n]\n" if count else "]\n")
    elif fmt is Output.jsonl:
        for chunk in _chunks(records, 1000):  # one write per thousand rows, not per row
            out.write("".join(dumps(record) + "\n" for record in chunk))
            count += len(chunk)
    elif fmt is Output.csv:
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for count, record in enumerate(records, 1):  # noqa: B007 - count is the result
            writer.writerow({k: _cell(record.get(k)) for k in columns})
    elif fmt is Output.plain:
        if header:
            out.write("\t".join(columns) + "\n")
        for chunk in _chunks(records, 1000):
            out.write("".join("\t".join(_cell(record.get(k)) for k in columns) + "\n" for record in chunk))
            count += len(chunk)
    else:
        count = _write_tables(records, columns, out, title)
    out.flush()
    return count


def write_rows(
    batches: Iterable[Sequence[Sequence[Any]]],
    columns: Sequence[str],
    fmt: Output,
    out: TextIO,
    *,
    shared_prefix: int = 0,
) -> int:
    """:func:`write_records` for rows given as tuples in ``columns`` order, a batch at a time; the same bytes,
    made without a dict per row (a listing of millions). ``shared_prefix``: how many leading columns rows
    often share with the row before (a listing in scope order), whose JSON is then made once."""
    count = 0
    if fmt is Output.jsonl or fmt is Output.json:
        encode = _JsonRows(columns, shared_prefix).encode
        if fmt is Output.json:
            out.write("[")
        for batch in batches:
            lines = [encode(row) for row in batch]
            if fmt is Output.jsonl:
                out.write("\n".join(lines) + "\n")
            else:
                out.write(("\n" if count == 0 else ",\n") + ",\n".join(lines))
            count += len(lines)
        if fmt is Output.json:
            out.write("\n]\n" if count else "]\n")
    elif fmt is Output.plain:
        for batch in batches:
            out.write("".join("\t".join([_cell(v) for v in row]) + "\n" for row in batch))
            count += len(batch)
    elif fmt is Output.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for batch in batches:
            writer.writerows([_cell(v) for v in row] for row in batch)
            count += len(batch)
    else:
        return write_records(
            (dict(zip(columns, row, strict=True)) for batch in batches for row in batch), columns, fmt, out
        )
    out.flush()
    return count


class _JsonRows:
    """``dumps(dict(zip(columns, row)))`` for a row of str, int and None (anything else goes through dumps),
    byte for byte, without the dict or an encoder per row."""

    def __init__(self, columns: Sequence[str], shared: int) -> None:
        names = [encode_basestring(c) + ": " for c in columns]
        self._shared = shared
        self._heads = names[:shared]
        self._tails = [("" if i == 0 else ", ") + name for i, name in enumerate(names) if i >= shared]
        self._last: Sequence[Any] | None = None
        self._prefix = "{"

    def encode(self, row: Sequence[Any]) -> str:
        shared = row[: self._shared]
        if shared != self._last:
            self._last = shared
            self._prefix = "{" + ", ".join([h + _json_scalar(v) for h, v in zip(self._heads, shared, strict=True)])
        tail = "".join([h + _json_scalar(v) for h, v in zip(self._tails, row[self._shared :], strict=True)])
        return f"{self._prefix}{tail}}}"


def _json_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value.__class__ is str:
        return encode_basestring(value)  # what dumps (ensure_ascii=False) uses for every string
    if value.__class__ is int:
        return int.__repr__(value)
    return dumps(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return dumps(value)
    return str(value)


def _chunks(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_tables(records: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO, title: str | None) -> int:
    """Rich tables, one page at a time so that a million rows never sit in memory."""
    from rich.console import Console
    from rich.table import Table

    # Rows stay on one line each: a long run id folded over six lines is unreadable.
    console = Console(file=out, soft_wrap=True, width=None if out.isatty() else 240)
    count = 0
    for page, chunk in enumerate(_chunks(records, 500)):
        table = Table(title=title if page == 0 else None, show_header=page == 0, box=None, pad_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for record in chunk:
            table.add_row(*(_cell(record.get(k)) for k in columns))
        console.print(table)
        count += len(chunk)
    if count == 0:
        console.print("(nothing)", style="dim")
    return count


def render_report(
    report: Report,
    fmt: Output,
    human: Callable[[dict[str, Any]], None],
    *,
    document_formats: tuple[Output, ...] = (Output.json, Output.jsonl),
) -> int:
    """A core report: its document as JSON for scripts (in ``document_formats``), else
    ``human(document)``; returns the report's exit code."""
    document = report.as_dict()
    if fmt in document_formats:
        sys.stdout.write(dumps(document) + "\n")
    else:
        human(document)
    return int(report.exit_code)


def write_value(value: Any, fmt: Output, out: TextIO) -> None:
    """A single decoded value: JSON for scripts, pretty for people."""
    if fmt is Output.json or fmt is Output.jsonl:
        out.write(json.dumps(value, ensure_ascii=False) + "\n")
    elif fmt is Output.plain or fmt is Output.csv:
        out.write((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)) + "\n")
    else:
        from rich.console import Console
        from rich.json import JSON

        Console(file=out).print(JSON(json.dumps(value, ensure_ascii=False)))
    out.flush()


def write_document(document: dict[str, Any], fmt: Output, out: TextIO, title: str | None = None) -> None:
    """A single result object (put, rm, config summaries)."""
    if fmt in (Output.json, Output.jsonl):
        out.write(dumps(document) + "\n")
    elif fmt is Output.table:
        write_records(({"field": k, "value": v} for k, v in document.items()), ["field", "value"], fmt, out, title)
    else:
        for k, v in document.items():
            out.write(f"{k}\t{_cell(v)}\n")
    out.flush()


class ProgressDisplay:
    """The core's progress callbacks drawn on stderr for people: a bar for a phase whose total is
    known, a spinner with counts otherwise; nothing for scripts (``with`` gives None then)."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress | None:
        if not self.interactive:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._progress = Progress(*columns, console=Console(file=sys.stderr), transient=True)
        self._progress.__enter__()
        return self.advance

    def advance(self, phase: str, advance: int, /, total: int | None = None) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=total)
        elif total is not None:
            self._progress.update(self._tasks[phase], total=total)
        self._progress.advance(self._tasks[phase], advance)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The display off the terminal while a question is asked there (it would redraw over it)."""
        if self._progress is None:
            yield
            return
        self._progress.stop()
        try:
            yield
        finally:
            self._progress.start()

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
