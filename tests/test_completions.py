"""The committed completion scripts are exactly what statectl.cli.completions generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from statectl.cli.completions import COMPLETE_VAR, SHELLS, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_file_matches_generator(shell: str) -> None:
    committed = ROOT / "completions" / f"statectl.{shell}"
    assert committed.is_file(), "run: python -m statectl.cli.completions"
    assert committed.read_text(encoding="utf-8") == generate(shell)
    assert COMPLETE_VAR in committed.read_text(encoding="utf-8")
    assert "statectl" in committed.read_text(encoding="utf-8")


def test_module_writes_the_three_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "statectl.cli.completions", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for shell in SHELLS:
        written = (tmp_path / f"statectl.{shell}").read_text(encoding="utf-8")
        assert written == (ROOT / "completions" / f"statectl.{shell}").read_text(encoding="utf-8")


def test_completion_callback_answers(tmp_path: Path) -> None:
    """The scripts call `statectl` with the complete var; it must answer with the commands."""
    statectl = Path(sys.executable).parent / "statectl"
    env = {"_STATECTL_COMPLETE": "complete_bash", "COMP_WORDS": "statectl ", "COMP_CWORD": "1", "PATH": "/usr/bin"}
    proc = subprocess.run([str(statectl)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("get", "put", "ls", "rm", "clear", "config"):
        assert command in proc.stdout.split(), proc.stdout


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="tcsh"):
        generate("tcsh")
