"""The command line as --help shows it: the commands in their deliberate order, defaults readable."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from statectl.cli.main import app

ORDER = [
    "get",
    "put",
    "ls",
    "rm",
    "clear",
    "export",
    "import",
    "cp",
    "mv",
    "migrate",
    "prune",
    "expire",
    "check",
    "where",
    "doctor",
    "config",
]
COMMANDS = [*ORDER, "migrate to-bucket", "migrate to-metastore", "migrate relocate"]


def _help(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_commands_are_listed_in_their_deliberate_order() -> None:
    listed = re.findall(r"^  (\w[\w-]*) ", _help().split("Commands:", 1)[1], flags=re.M)
    assert listed == ORDER


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_defaults_show_without_escapes(command: str) -> None:
    text = _help(*command.split())
    assert "\\[" not in text, text
    if command in ("", "check", "migrate to-bucket"):
        assert "[default: " in text, text


def test_global_concurrency_default() -> None:
    assert "[default: 16]" in " ".join(_help().split())
