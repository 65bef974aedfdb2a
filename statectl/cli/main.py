"""The statectl entry point: the command groups, in the order --help lists them, and error handling."""

from __future__ import annotations

import sys

import typer

from statectl.cli import check, expire, info, migrate, prune, transfer, troubleshoot, values
from statectl.cli.app import app
from statectl.errors import ExitCode, StatectlError

# Each module holds one group of commands on its own Typer app; --help lists them in this order:
# get, put, ls, rm, clear (values), export, import, cp, mv (transfer), migrate, prune, expire, check,
# where, doctor (troubleshoot), config (info).
COMMAND_GROUPS = (
    values.app,
    transfer.app,
    migrate.app,
    prune.app,
    expire.app,
    check.app,
    troubleshoot.app,
    info.app,
)
for group in COMMAND_GROUPS:
    app.add_typer(group)

__all__ = ["app", "run"]


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
