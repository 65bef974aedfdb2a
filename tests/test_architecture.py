"""The package's layering, checked on the source with ``ast`` (no import, no Airflow run, well under a second).

    statectl/core/    scopes, filters, layout, codec, config, durations: imports no other layer
    statectl/stores/  metastore, bucket, lock, store: may import core, never ops or cli
    statectl/ops/     values, scan, check, prune, ...: may import core and stores, never cli
    statectl/cli/     Typer / rich: the only place typer, click and rich are imported

Every import counts, wherever it is: module level, inside a function, under ``if TYPE_CHECKING:``, in
a ``try``; ``import statectl.x``, ``from statectl.x import y``, ``from statectl import x``, relative
imports, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
Package ``__init__.py`` files hold at most a docstring, so importing a package never drags its
modules in (cold start stays flat); ``statectl/__init__.py`` holds the docstring and ``__version__``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "statectl"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
LAYERS = ("core", "stores", "ops", "cli")

# layer -> the modules it must not import (a module and everything under it)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("statectl.stores", "statectl.ops", "statectl.cli"),
    "stores": ("statectl.ops", "statectl.cli"),
    "ops": ("statectl.cli",),
}
UI_LIBRARIES = ("typer", "click", "rich")  # anywhere but statectl/cli/


@dataclass(frozen=True)
class Import:
    line: int
    names: tuple[str, ...]  # absolute dotted names this statement may bring in


def module_name(relpath: str) -> str:
    """'statectl/core/layout.py' -> 'statectl.core.layout'; a package's __init__.py -> the package."""
    parts = relpath.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(relpath: str, level: int, module: str | None) -> str:
    package = module_name(relpath).split(".")
    if not relpath.endswith("__init__.py"):
        package.pop()  # a module's own package
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


def imports_in(source: str, relpath: str) -> list[Import]:
    """Every import in the source, at any depth, as absolute dotted names."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=relpath)):
        if isinstance(node, ast.Import):
            found.append(Import(node.lineno, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(relpath, node.level, node.module) if node.level else (node.module or "")
            # `from pkg import name` may import the module pkg.name: count both
            names = (base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*"))
            found.append(Import(node.lineno, names))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and _literal_first_arg(node) is not None:
            found.append(Import(node.lineno, (str(_literal_first_arg(node)),)))
    return sorted(found, key=lambda i: i.line)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _literal_first_arg(call: ast.Call) -> str | None:
    first = call.args[0] if call.args else None
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def layer_of(relpath: str) -> str | None:
    parts = relpath.split("/")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def layering_violations(source: str, relpath: str) -> list[str]:
    """'path:line: ...' for each import the module's layer forbids."""
    layer = layer_of(relpath)
    out: list[str] = []
    for imp in imports_in(source, relpath):
        for forbidden in FORBIDDEN.get(layer or "", ()):
            hit = next((n for n in imp.names if _within(n, forbidden)), None)
            if hit is not None:
                out.append(f"{relpath}:{imp.line}: statectl/{layer}/ imports {hit} ({forbidden} is off limits)")
        if layer != "cli":
            for lib in UI_LIBRARIES:
                hit = next((n for n in imp.names if _within(n, lib)), None)
                if hit is not None:
                    out.append(f"{relpath}:{imp.line}: imports {hit} outside statectl/cli/")
    return out


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def init_violations(source: str, relpath: str) -> list[str]:
    """A package __init__.py: nothing but an optional docstring (the top package: plus ``__version__``)."""
    body = ast.parse(source, filename=relpath).body
    if body and _is_docstring(body[0]):
        body = body[1:]
    if relpath == f"{PACKAGE}/__init__.py":
        body = [
            s
            for s in body
            if not (
                isinstance(s, ast.Assign)
                and [getattr(t, "id", None) for t in s.targets] == ["__version__"]
                and isinstance(s.value, ast.Constant)
            )
        ]
    return [f"{relpath}:{s.lineno}: a package __init__.py holds only a docstring, not {type(s).__name__}" for s in body]


def package_sources() -> dict[str, str]:
    root = PACKAGE_DIR.parent
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(PACKAGE_DIR.rglob("*.py"))}


# --------------------------------------------------------------------------- the real tree


def test_the_layers_are_there() -> None:
    sources = package_sources()
    for layer in LAYERS:
        assert f"{PACKAGE}/{layer}/__init__.py" in sources, f"statectl/{layer}/ is not a package"
        assert any(layer_of(path) == layer and not path.endswith("__init__.py") for path in sources), layer


def test_no_layer_imports_a_layer_above_it() -> None:
    problems = [v for path, source in package_sources().items() for v in layering_violations(source, path)]
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_package_inits_are_empty() -> None:
    problems = [
        v
        for path, source in package_sources().items()
        if path.endswith("__init__.py")
        for v in init_violations(source, path)
    ]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the checks themselves can fail

FLAGGED = [
    ("statectl/core/layout.py", "from statectl.cli.render import err\n", 1, "statectl.cli.render"),
    ("statectl/core/layout.py", "import statectl.stores.bucket\n", 1, "statectl.stores.bucket"),
    ("statectl/core/codec.py", "from statectl import ops\n", 1, "statectl.ops"),
    ("statectl/core/codec.py", "from ..stores import store\n", 1, "statectl.stores"),
    ("statectl/core/codec.py", "from .. import cli\n", 1, "statectl.cli"),
    (
        "statectl/core/scopes.py",
        '"""Doc."""\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from statectl.stores.store import S\n',
        5,
        "statectl.stores.store",
    ),
    ("statectl/stores/bucket.py", "def f():\n    if True:\n        import statectl.ops.scan as s\n", 3, "statectl.ops"),
    ("statectl/stores/lock.py", "class L:\n    def m(self):\n        from statectl.cli import render\n", 3, "cli"),
    ("statectl/stores/lock.py", "import importlib\nimportlib.import_module('statectl.ops.prune')\n", 2, "ops"),
    (
        "statectl/ops/scan.py",
        "try:\n    from statectl.cli.render import err\nexcept ImportError:\n    pass\n",
        2,
        "cli",
    ),
    ("statectl/ops/scan.py", "import rich.console\n", 1, "rich.console"),
    ("statectl/stores/store.py", "from typer import Exit\n", 1, "typer"),
    ("statectl/errors.py", "def f():\n    import click\n", 2, "click"),
    ("statectl/__main__.py", "from rich import print\n", 1, "rich"),
]


@pytest.mark.parametrize(("path", "source", "line", "named"), FLAGGED)
def test_a_forbidden_import_is_reported(path: str, source: str, line: int, named: str) -> None:
    [violation] = layering_violations(source, path)
    assert violation.startswith(f"{path}:{line}: ") and named in violation, violation


ALLOWED = [
    ("statectl/stores/store.py", "from statectl.core.layout import ObjectURL\nfrom statectl.errors import DataError\n"),
    ("statectl/stores/store.py", "from ..core import codec\nfrom . import bucket\n"),
    ("statectl/ops/scan.py", "from statectl.stores.store import StateStore\nimport statectl.core.filters\n"),
    ("statectl/cli/main.py", "import typer\nfrom rich.console import Console\nfrom statectl.ops import check\n"),
    ("statectl/cli/read.py", "from ..ops.values import get\n"),
    ("statectl/core/codec.py", "import richtext\nimport clickhouse\nfrom statectl.core import layout\n"),
    ("statectl/__main__.py", "from statectl.cli.main import run\n"),
]


@pytest.mark.parametrize(("path", "source"), ALLOWED)
def test_an_allowed_import_is_not_reported(path: str, source: str) -> None:
    assert layering_violations(source, path) == []


def test_a_package_init_with_code_is_reported() -> None:
    assert init_violations('"""Doc."""\n', "statectl/ops/__init__.py") == []
    assert init_violations("", "statectl/ops/__init__.py") == []
    [v] = init_violations('"""Doc."""\n\nfrom statectl.ops.scan import Scan\n', "statectl/ops/__init__.py")
    assert v.startswith("statectl/ops/__init__.py:3: ") and "ImportFrom" in v
    [v] = init_violations('"""Doc."""\n__all__ = ["x"]\n', "statectl/core/__init__.py")
    assert v.startswith("statectl/core/__init__.py:2: ")
    assert init_violations('"""Doc."""\n\n__version__ = "0.1.0"\n', "statectl/__init__.py") == []
    [v] = init_violations('"""Doc."""\n__version__ = "0.1.0"\nimport typer\n', "statectl/__init__.py")
    assert v.startswith("statectl/__init__.py:3: ")
