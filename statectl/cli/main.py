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
        int | None, typer.Option("--threshold", help="Offload threshold in bytes, >= 0 (overrides [common.io]).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="Write as workers with this backend do: metastore or objectstorage."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Parallel object I/O, 1 to 256.")] = 16,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Global options apply to every command and override Airflow's configuration."""
    # Ranges are checked here rather than with min=/max=: Typer escapes their help text badly.
    if threshold is not None and threshold < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--threshold")
    if not 1 <= concurrency <= 256:
        raise typer.BadParameter("must be between 1 and 256", param_hint="--concurrency")
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
    from statectl.cli import check, info, migrate, prune, read, troubleshoot, write  # noqa: F401 - registers commands


_register_commands()


def run() -> None:
    """Entry point: one-line errors and documented exit codes, tracebacks only with --debug."""
    from click import exceptions as exc  # Typer < 0.21 raises Click's own exceptions

    debug = "--debug" in sys.argv[1:]
    _quiet_logging(debug)
    if not debug:
        # "Exception ignored in __del__" reports (e.g. fsspec retrying a failed upload while
        # being garbage-collected) are tracebacks on stderr after the one error line.
        sys.unraisablehook = lambda _unraisable: None
    try:
        code = app(standalone_mode=False)
    except StatectlError as e:
        if debug:
            raise
        print(f"statectl: error: {e.message}", file=sys.stderr)
        sys.exit(int(e.exit_code))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("statectl: aborted", file=sys.stderr)
        sys.exit(130)
    except exc.ClickException as e:
        if isinstance(e, getattr(exc, "NoArgsIsHelpError", ())):
            print(e.format_message(), file=sys.stderr)  # the help text, as Click prints it
            sys.exit(int(ExitCode.USAGE))
        message = " ".join(e.format_message().split())  # one line, whatever Click wrapped
        print(f"statectl: error: {message}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE) if isinstance(e, exc.UsageError) else e.exit_code)
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


def _quiet_logging(debug: bool = False) -> None:
    """Library logs go to stderr at WARNING, never to stdout."""
    import logging
    import os

    if not debug:
        # Airflow configures its own (structlog) logging at import, at INFO by default: e.g.
        # every connection lookup logs a line. Only statectl's process sees this setting.
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
