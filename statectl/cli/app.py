"""The root application: global options, the state they leave for commands, and ``open_store``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
import typer.core

from statectl import __version__
from statectl.core.config import DEFAULT_CONCURRENCY, Config, Overrides, check_backend_choice, check_concurrency
from statectl.errors import UsageError

if TYPE_CHECKING:
    from statectl.stores.store import StateStore

T = TypeVar("T")

# Help is plain Click text (rich_markup_mode=None), yet with rich installed Typer escapes "[default: 16]"
# and "[required]" for an HTML export statectl never does: help showed "\\[default: 16]".
typer.core.HAS_RICH = False

app = typer.Typer(
    name="statectl",
    help="Administer Apache Airflow's task and asset state store: the metastore and the object storage bucket.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class AppState:
    overrides: Overrides
    concurrency: int = DEFAULT_CONCURRENCY

    def config(self) -> Config:
        return Config(self.overrides)

    def store(self) -> StateStore:
        from statectl.stores.store import StateStore

        return StateStore(self.config(), concurrency=self.concurrency)


def _version(value: bool) -> None:
    if value:
        print(f"statectl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    sql_alchemy_conn: Annotated[
        str | None, typer.Option("--sql-alchemy-conn", help="Metadata DB URL (overrides [database] sql_alchemy_conn).")
    ] = None,
    path: Annotated[
        str | None,
        typer.Option("--path", help="Bucket base path (overrides [common.io] state_store_objectstorage_path)."),
    ] = None,
    compression: Annotated[
        str | None, typer.Option("--compression", help="Object compression, e.g. gzip (overrides [common.io]).")
    ] = None,
    threshold: Annotated[
        int | None, typer.Option("--threshold", help="Offload threshold in bytes, >= 0 (overrides [common.io]).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="Write as workers with this backend do: metastore or objectstorage."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Parallel object I/O, 1 to 256.")
    ] = DEFAULT_CONCURRENCY,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Global options apply to every command and override Airflow's configuration."""
    # Ranges are checked here rather than with min=/max=: Typer escapes their help text badly.
    if threshold is not None and threshold < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--threshold")
    _check_option(check_concurrency, concurrency, "--concurrency")
    if backend is not None:
        _check_option(check_backend_choice, backend, "--backend")
    ctx.obj = AppState(
        Overrides(
            sql_alchemy_conn=sql_alchemy_conn, path=path, compression=compression, threshold=threshold, backend=backend
        ),
        concurrency=concurrency,
    )


def _check_option(check: Callable[[T], T], value: T, flag: str) -> None:
    """The core's check of an option, reported the way Click reports a bad parameter."""
    try:
        check(value)
    except UsageError as e:
        raise typer.BadParameter(e.message.removeprefix(f"{flag} "), param_hint=flag) from None


def state(ctx: typer.Context) -> AppState:
    return ctx.ensure_object(AppState) if ctx.obj is None else ctx.obj


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """Anything a library prints while the core works (Airflow's logs) goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def open_store(ctx: typer.Context, *, concurrency: int | None = None) -> Iterator[StateStore]:
    """The deployment's store for one command: library output kept off stdout, closed on every path.

    ``concurrency``: a command's own --concurrency, over the global one."""
    app_state = state(ctx)
    if concurrency is not None:
        app_state.concurrency = check_concurrency(concurrency)
    store = app_state.store()
    try:
        with results_only_on_stdout():
            yield store
    finally:
        store.close()
