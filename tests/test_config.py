"""statectl.core.config.Config against Airflow's own `airflow.configuration.conf` as the oracle.

Each scenario is an environment plus an airflow.cfg; the oracle runs in a subprocess with the
same environment, and every option statectl resolves must equal what Airflow returns.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from statectl.core.config import OBJECT_STORAGE_BACKEND, OPTIONS, Config, Overrides
from tests.cli_support import statectl
from tests.infra import PYTHON, clean_env

ORACLE = r"""
import json
from airflow.configuration import conf
try:
    conf.load_providers_configuration()
except Exception:
    pass
options = json.loads(__import__("sys").argv[1])
out = {}
for section, key in options:
    try:
        out[f"{section}.{key}"] = conf.get(section, key)
    except Exception as e:
        out[f"{section}.{key}"] = None
print("ORACLE" + json.dumps(out))
"""


def oracle(env: dict[str, str]) -> dict[str, str | None]:
    options = json.dumps([[o.section, o.key] for o in OPTIONS])
    proc = subprocess.run(
        [PYTHON, "-c", ORACLE, options], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ORACLE"))
    return json.loads(line.removeprefix("ORACLE"))


def check_against_oracle(env: dict[str, str]) -> Config:
    config = Config(environ=env)  # before the oracle: Airflow may write a default airflow.cfg
    expected = oracle(env)
    for option in OPTIONS:
        want = expected[f"{option.section}.{option.key}"]
        got = config.value(option)
        if want is None:  # Airflow has no default for it (provider config not loaded)
            assert config.settings[option].source == "default", option
            continue
        if option.sensitive:
            got, want = got.strip(), want.strip()
        assert got == want, f"{option.name}: statectl {got!r} ({config.settings[option].source}), Airflow {want!r}"
    return config


def base_env(home: Path) -> dict[str, str]:
    env = clean_env()
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return env


def write_cfg(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_env_cfg_interpolation_and_var_expansion(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = base_env(home)
    env["STATECTL_TEST_BUCKET"] = str(tmp_path / "bkt")
    env["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION"] = "gzip"
    env["AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES"] = "1234"
    # _CMD forms are for sensitive keys only: Airflow ignores this one, and so must statectl.
    env["AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS_CMD"] = "echo 99"
    write_cfg(
        home / "airflow.cfg",
        f"[database]\nsql_alchemy_conn = sqlite:///{tmp_path}/db%%20file.db\n"
        "[common.io]\nstate_store_objectstorage_path = file://${STATECTL_TEST_BUCKET}/state\n"
        "state_store_objectstorage_threshold = 100\n"
        "state_store_objectstorage_compression = bz2\n"
        "state_store_objectstorage_threshold_cmd = echo 5\n"
        "[state_store]\ndefault_retention_days = 7\n"
        "[workers]\nstate_store_backend = airflow.providers.common.io.state_store.backend."
        "StateStoreObjectStorageBackend\n",
    )
    config = check_against_oracle(env)
    assert config.sql_alchemy_conn == f"sqlite:///{tmp_path}/db%20file.db"
    assert config.base_path == f"file://{tmp_path}/bkt/state"
    assert (config.threshold, config.compression, config.retention_days) == (100, "gzip", 7)
    assert config.max_value_bytes == 1234 and config.offloads


def test_env_cmd_wins_over_cfg(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = base_env(home)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] = f"echo sqlite:///{tmp_path}/from_cmd.db"
    write_cfg(home / "airflow.cfg", f"[database]\nsql_alchemy_conn = sqlite:///{tmp_path}/from_cfg.db\n")
    config = check_against_oracle(env)
    assert config.sql_alchemy_conn == f"sqlite:///{tmp_path}/from_cmd.db"
    assert config.settings[OPTIONS[0]].source == "env AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"


def test_cfg_cmd_and_deprecated_core_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = base_env(home)
    write_cfg(home / "airflow.cfg", f"[database]\nsql_alchemy_conn_cmd = echo sqlite:///{tmp_path}/cfg_cmd.db\n")
    assert check_against_oracle(env).sql_alchemy_conn == f"sqlite:///{tmp_path}/cfg_cmd.db"

    home2 = tmp_path / "home2"
    env2 = base_env(home2)
    write_cfg(home2 / "airflow.cfg", f"[core]\nsql_alchemy_conn = sqlite:///{tmp_path}/core.db\n")
    assert check_against_oracle(env2).sql_alchemy_conn == f"sqlite:///{tmp_path}/core.db"


def test_airflow_config_env_and_defaults(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = base_env(home)
    other = tmp_path / "elsewhere" / "custom.cfg"
    write_cfg(other, "[common.io]\nstate_store_objectstorage_threshold = 4096\n")
    write_cfg(home / "airflow.cfg", "[common.io]\nstate_store_objectstorage_threshold = 1\n")  # not read
    env["AIRFLOW_CONFIG"] = str(other)
    config = check_against_oracle(env)
    assert config.threshold == 4096 and config.config_file == other
    assert config.sql_alchemy_conn == f"sqlite:///{home}/airflow.db"
    assert config.settings[OPTIONS[0]].source == "default"


def test_config_command_sources_overrides_and_masking(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = base_env(home)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg2://u:Very-Secret-1@db:5432/airflow"
    write_cfg(home / "airflow.cfg", "[common.io]\nstate_store_objectstorage_compression = bz2\n")
    r = statectl(env, "config", "-o", "json")
    assert r.code == 0, str(r)
    doc = json.loads(r.stdout)
    settings = {s["setting"]: s for s in doc["settings"]}
    assert doc["config_file"] == str(home / "airflow.cfg")
    assert list(settings) == [o.name for o in OPTIONS]
    assert settings["[database] sql_alchemy_conn"] == {
        "setting": "[database] sql_alchemy_conn",
        "value": "postgresql+psycopg2://u:***@db:5432/airflow",
        "source": "env AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    }
    assert (
        settings["[common.io] state_store_objectstorage_compression"]["source"] == f"{home / 'airflow.cfg'} [common.io]"
    )
    assert settings["[state_store] default_retention_days"] == {
        "setting": "[state_store] default_retention_days",
        "value": "30",
        "source": "default",
    }
    assert "Very-Secret-1" not in r.stdout + r.stderr

    r = statectl(
        env,
        "--sql-alchemy-conn",
        "postgresql://x:Other-Secret-2@h/db?password=Query-Secret-3",
        "--path",
        "file:///srv/state",
        "--compression",
        "xz",
        "--threshold",
        "10",
        "--backend",
        "objectstorage",
        "config",
        "-o",
        "json",
    )
    assert r.code == 0, str(r)
    settings = {s["setting"]: s for s in json.loads(r.stdout)["settings"]}
    overridden = {
        "[database] sql_alchemy_conn": "postgresql://x:***@h/db?password=***",
        "[common.io] state_store_objectstorage_path": "file:///srv/state",
        "[common.io] state_store_objectstorage_compression": "xz",
        "[common.io] state_store_objectstorage_threshold": "10",
        "[workers] state_store_backend": OBJECT_STORAGE_BACKEND,
    }
    for name, value in overridden.items():
        assert settings[name] == {"setting": name, "value": value, "source": "command line"}
    for secret in ("Very-Secret-1", "Other-Secret-2", "Query-Secret-3"):
        assert secret not in r.stdout + r.stderr
    for fmt in ("plain", "csv", "table", "jsonl"):
        r = statectl(env, "config", "-o", fmt)
        assert r.code == 0 and "Very-Secret-1" not in r.stdout + r.stderr, str(r)


@pytest.mark.parametrize(
    ("overrides", "attr", "value"),
    [
        (Overrides(backend="metastore"), "offloads", False),
        (Overrides(threshold=0), "threshold", 0),
        (Overrides(compression="gzip"), "compression", "gzip"),
    ],
)
def test_overrides_in_process(tmp_path: Path, overrides: Overrides, attr: str, value: object) -> None:
    assert getattr(Config(overrides, environ=base_env(tmp_path)), attr) == value


def test_cmd_failure_does_not_echo_output(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] = "sh -c 'echo Leaky-Secret-4; exit 3'"
    r = statectl(env, "config")
    assert r.code == 4, str(r)
    assert "Leaky-Secret-4" not in r.stdout + r.stderr
    assert r.stderr.startswith("statectl: error: ") and len(r.stderr.strip().splitlines()) == 1
