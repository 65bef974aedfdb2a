"""Shell completion scripts for statectl (bash, zsh, fish).

``python -m statectl.cli.completions [DIR]`` writes completions/statectl.{bash,zsh,fish};
the scripts are the ones ``statectl --show-completion`` prints (Typer's completion classes),
calling back into ``statectl`` with ``_STATECTL_COMPLETE`` set.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROG_NAME = "statectl"
COMPLETE_VAR = "_STATECTL_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "completions"


def generate(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    import typer.main
    from typer._completion_classes import completion_init

    from statectl.cli.main import app

    completion_init()  # Typer's classes (what `statectl --show-completion` prints), not Click's

    from click import shell_completion

    if shell not in SHELLS:
        raise ValueError(f"unsupported shell {shell!r}; choose from {', '.join(SHELLS)}")
    cls = shell_completion.get_completion_class(shell)
    if cls is None:  # pragma: no cover - Typer registers all three
        raise ValueError(f"no completion class for {shell!r}")
    command = typer.main.get_command(app)
    script = cls(command, {}, PROG_NAME, COMPLETE_VAR).source()
    return script if script.endswith("\n") else script + "\n"


def write_all(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = directory / f"{PROG_NAME}.{shell}"
        path.write_text(generate(shell), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    for path in write_all(Path(args[0]) if args else DEFAULT_DIR):
        print(path)


if __name__ == "__main__":
    main()
