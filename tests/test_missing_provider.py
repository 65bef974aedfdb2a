"""Without the provider of a base path's scheme, every command says what to install (exit 4).

The check runs in a virtual environment built from uv.lock without the `google` and `azure` extras
(statectl's core dependencies only), as a user who installed plain `statectl` has it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statectl.errors import ExitCode
from tests.cli_support import Result
from tests.infra import AirflowEnv

ROOT = Path(__file__).resolve().parent.parent


def _uv() -> list[str]:
    """uv as scripts/bootstrap.sh finds it: on PATH, else the module pip installed for python3."""
    uv = shutil.which("uv")
    return [uv] if uv else [shutil.which("python3") or "python3", "-m", "uv"]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with statectl's locked core dependencies: no Google or Azure provider."""
    root = tmp_path_factory.mktemp("core_venv")
    requirements = root / "requirements.txt"
    exported = subprocess.run(
        [*_uv(), "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    requirements.write_text(exported)
    venv = root / "venv"
    subprocess.run([*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [*_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(requirements)],
        check=True,
        timeout=900,
    )
    python = venv / "bin" / "python"
    probe = "import importlib.util as u; print(u.find_spec('airflow.providers.google'), u.find_spec('adlfs'))"
    assert subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout.split() == [
        "None",
        "None",
    ], "the core venv must not have the providers"
    return python


def run(python: Path, env: dict[str, str], *args: str) -> Result:
    proc = subprocess.run(
        [python, "-m", "statectl", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("base", "package", "extra"),
    [
        ("gs://gcp_conn@bucket/state", "apache-airflow-providers-google", "google"),
        ("abfs://azure_conn@container/state", "apache-airflow-providers-microsoft-azure", "azure"),
    ],
    ids=["gcs", "azure"],
)
def test_every_command_names_the_package_and_the_extra(
    core_venv: Path, airflow_home: AirflowEnv, base: str, package: str, extra: str
) -> None:
    env = {**airflow_home.env, "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH": base}
    commands = [
        ["check"],
        ["prune", "--dry-run"],
        ["migrate", "to-bucket", "--dry-run"],
        ["get", "k", "--asset", "a", "--from-bucket"],
        ["where", "k", "--asset", "a"],
    ]
    for args in commands:
        r = run(core_venv, env, *args)
        assert r.code == ExitCode.CONFIG, (args, str(r))
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, str(r))
        assert package in r.stderr and f"pip install 'statectl[{extra}]'" in r.stderr, (args, str(r))

    r = run(core_venv, env, "doctor", "-o", "json")
    assert r.code == ExitCode.UNHEALTHY, str(r)
    findings = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    assert findings["provider"]["status"] == "fail" and package in findings["provider"]["detail"]
    assert f"statectl[{extra}]" in findings["provider"]["fix"]
    assert findings["bucket"]["status"] == "warn" and "not probed" in findings["bucket"]["detail"]


def test_a_worker_without_the_provider_fails_the_same_way(core_venv: Path) -> None:
    """What statectl refuses, a worker cannot do either: Airflow's object storage has no gs:// filesystem."""
    code = (
        "from airflow.sdk.io.store import attach\n"
        "try:\n    attach('gs', 'gcp_conn').fs\nexcept ValueError as e:\n    print(e)\n"
    )
    out = subprocess.run([core_venv, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert "No filesystem registered" in out and "gs" in out, out
