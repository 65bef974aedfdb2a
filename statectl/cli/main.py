"""The statectl application: global options, error handling and the entry point."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import typer

from statectl import __version__
from statectl.config import Config, Overrides
from statectl.errors import ExitCode, StatectlError

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
    concurrency: int = 16

    def config(self) -> Config:
        return Config(self.overrides)

    def store(self):
        from statectl.store import StateStore

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
        int | None, typer.Option("--threshold", min=0, help="Offload threshold in bytes (overrides [common.io]).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="Write as workers with this backend do: metastore or objectstorage."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=256, help="Parallel object I/O.")] = 16,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Global options apply to every command and override Airflow's configuration."""
    if backend is not None and backend not in ("metastore", "objectstorage"):
        raise typer.BadParameter("must be metastore or objectstorage", param_hint="--backend")
    ctx.obj = AppState(
        Overrides(
            sql_alchemy_conn=sql_alchemy_conn, path=path, compression=compression, threshold=threshold, backend=backend
        ),
        concurrency=concurrency,
    )


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """Anything a library prints while the core works (Airflow's logs) goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def state(ctx: typer.Context) -> AppState:
    return ctx.ensure_object(AppState) if ctx.obj is None else ctx.obj


def _register_commands() -> None:
    from statectl.cli import info, read, write  # noqa: F401 - registers the commands


_register_commands()


def run() -> None:
    """Entry point: one-line errors and documented exit codes, tracebacks only with --debug."""
    import click

    debug = "--debug" in sys.argv[1:]
    _quiet_logging()
    try:
        code = app(standalone_mode=False)
    except StatectlError as e:
        if debug:
            raise
        print(f"statectl: error: {e.message}", file=sys.stderr)
        sys.exit(int(e.exit_code))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("statectl: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        print(f"statectl: error: {e.format_message()}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE) if isinstance(e, click.UsageError) else e.exit_code)
    except KeyboardInterrupt:
        print("statectl: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        if debug:
            raise
        print(f"statectl: unexpected error: {type(e).__name__}: {e} (rerun with --debug)", file=sys.stderr)
        sys.exit(int(ExitCode.FAILURE))
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_logging() -> None:
    """Library logs go to stderr at WARNING, never to stdout."""
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
