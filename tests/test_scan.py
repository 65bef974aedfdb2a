"""statectl.ops.scan: the merge join of the listing under the base path and the rows' refs, on real stores.

State is written by a real DAG run through the real provider (SQLite + file://, gzip, a threshold that
sends one value inline; PostgreSQL + moto S3 with a conn_id), then problems are planted for real:
a deleted object (dangling), an orphan, statectl's reserved object, a ref outside the base path, a
ref to the same path under another scheme / conn_id (a referrer, never an orphan maker).
The local walk's order is checked against sorted() with hypothesis.

The seeds here are shared with tests/test_check.py.
"""

from __future__ import annotations

import gzip
import json
import os
import string
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statectl.core.config import Config
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL
from statectl.core.scopes import TaskScope
from statectl.ops.scan import Scan, ScanEntry, region_for
from statectl.stores import listing
from statectl.stores.bucket import Buckets, parse_timestamp
from statectl.stores.store import StateStore
from tests.infra import (
    AirflowEnv,
    S3Bucket,
    WorkerBucketSeed,
    run_dag,
    seed_worker_bucket,
    state_writer_dag,
    worker_bucket_copy,
)

SCAN_DAG = "statectl_scan"
SCAN_ASSET = "scan_asset"
THRESHOLD = 8  # json.dumps of "tiny" (1) is 1 byte: inline; every other value is an object
COMPRESSION = "gzip"
TASK_VALUES: dict[str, Any] = {
    "k0": {"v": "x" * 40},
    "a-b": "dash" * 5,
    "a/b": "slash" * 5,
    "a.b": "dot" * 5,
    "a~b": "tilde" * 5,
    "Z": "zed" * 5,
    "0": "zero" * 5,
    "tiny": 1,
}
MAPPED_VALUES: dict[int, Any] = {0: {"i": "0" * 20}, 1: {"i": "1" * 20}, 2: {"i": "2" * 20}}
ASSET_VALUES: dict[str, Any] = {"wm": {"w": "m" * 30}, "a/b": "asset slash value"}
N_OBJECTS = len(TASK_VALUES) - 1 + len(MAPPED_VALUES) + len(ASSET_VALUES)

WRITER_SOURCE = state_writer_dag(
    SCAN_DAG, SCAN_ASSET, "file:///tmp/statectl-scan-asset", TASK_VALUES, MAPPED_VALUES, ASSET_VALUES
)


# --------------------------------------------------------------------------- seeds (shared with test_check)

_memo: dict[str, WorkerBucketSeed] = {}


def file_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    """One real DAG run through the provider into SQLite + file:// (once per session)."""
    if "file" not in _memo:
        root = tmp_path_factory.mktemp("scan_seed")
        _memo["file"] = seed_worker_bucket(airflow_template / "airflow.db", root, WRITER_SOURCE, THRESHOLD, COMPRESSION)
    return _memo["file"]


def s3_written(home: AirflowEnv, bucket: S3Bucket, tmp_path: Path) -> dict[str, str]:
    """A real DAG run through the provider into this PostgreSQL DB + S3 (conn_id); the worker env."""
    env = {**home.with_backend(bucket.url("state"), THRESHOLD, COMPRESSION), **bucket.conn_env}
    run_dag(env, WRITER_SOURCE, tmp_path)
    return env


def wrapper(ref: str) -> str:
    return json.dumps({"__airflow_state_ref__": ref})


def ref_of_row(home: AirflowEnv, task_id: str, key: str, map_index: int = -1) -> str:
    [(value,)] = home.query(
        'SELECT value FROM task_state_store WHERE task_id = :t AND "key" = :k AND map_index = :m',
        t=task_id,
        k=key,
        m=map_index,
    )
    return json.loads(value)["__airflow_state_ref__"]


def set_row(home: AirflowEnv, task_id: str, key: str, value: str, map_index: int = -1) -> None:
    home.query(
        'UPDATE task_state_store SET value = :v WHERE task_id = :t AND "key" = :k AND map_index = :m',
        v=value,
        t=task_id,
        k=key,
        m=map_index,
    )


def make_old(path: Path, hours: float = 3) -> None:
    old = datetime.now().timestamp() - hours * 3600
    os.utime(path, (old, old))


@pytest.fixture(scope="session")
def scan_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    return file_seed(airflow_template, tmp_path_factory)


@pytest.fixture
def scan_home(scan_seed: WorkerBucketSeed, tmp_path: Path) -> AirflowEnv:
    return worker_bucket_copy(scan_seed, tmp_path)


# --------------------------------------------------------------------------- helpers


def worker_env_of(home: AirflowEnv) -> dict[str, str]:
    return home.with_backend(home.bucket_url, THRESHOLD, COMPRESSION)


def run_scan(env: dict[str, str], flt: RowFilter | None = None) -> tuple[list[ScanEntry], Scan]:
    store = StateStore(Config(environ=env))
    try:
        scan = Scan(store, flt)
        entries = list(scan.entries())
        return entries, scan
    finally:
        store.close()


def assert_path_order(entries: list[ScanEntry]) -> None:
    paths = [e.path for e in entries]
    assert paths == sorted(paths) and len(set(paths)) == len(paths), paths


def row_where(entry: ScanEntry) -> set[tuple[str | None, int, str]]:
    out = set()
    for referrer in entry.referrers:
        scope = referrer.row.scope
        if isinstance(scope, TaskScope):
            out.add((scope.task_id, scope.map_index, referrer.row.key))
        else:
            out.add((None, -1, referrer.row.key))
    return out


# --------------------------------------------------------------------------- the local walk


_SEGMENT = st.text(alphabet=string.ascii_letters[:3] + "-0.~_%\u00e9\u4e2d\U0001f600", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join), min_size=1, max_size=25))
def test_walk_order_is_str_order(paths: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("walk")
    files: list[str] = []
    for path in dict.fromkeys(paths):
        # A path cannot be both a file and a directory: keep the first that fits.
        target = root / path
        if any(p.is_file() for p in [*target.parents][: len(path.split("/")) - 1]) or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.encode())
        files.append(f"{root}/{path}")
    base = ObjectURL.parse(root.as_uri())
    listed = [o.path for o in Buckets().iter_listing(base)]
    assert listed == sorted(files)
    # A prefix walk yields exactly the paths with that relative prefix, in the same order.
    first = files[0].removeprefix(f"{root}/")
    prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else first[:1]
    under = [p for p in sorted(files) if p.startswith(f"{root}/{prefix}")]
    assert [o.path for o in Buckets().iter_listing(base, prefix)] == under
    # By folder, also split a level or two down and listed several at once: the same stream.
    for ahead in (0, 1, 3):
        by_folder = listing.iter_listing_by_folder(base, _every, Buckets().fs, ahead=ahead)
        assert [o.path for o in by_folder] == sorted(files)
    odd = [p for p in sorted(files) if len(p.removeprefix(f"{root}/").split("/", 1)[0]) % 2]
    keep_odd = listing.iter_listing_by_folder(base, lambda name: len(name) % 2 == 1, Buckets().fs, ahead=2)
    assert [o.path for o in keep_odd] == odd


def _every(name: str) -> bool:
    return True


# --------------------------------------------------------------------------- filters -> regions


def test_region_for_maps_filters_to_listing_prefixes() -> None:
    assert region_for(None).prefix == ""
    assert region_for(RowFilter(dag_id="d x")).prefix == "d%20x/"
    assert region_for(RowFilter(dag_id="d", run_id="r:1")).prefix == "d/r%3A1/"
    assert region_for(RowFilter(dag_id="d", run_id="r", task_id="t/1")).prefix == "d/r/t%2F1/"
    assert region_for(RowFilter(dag_id="d", task_id="t")).prefix == "d/"  # a gap: run unknown
    assert region_for(RowFilter(asset_name="a/b", tasks=False)).prefix == "assets/a%2Fb/"
    assert region_for(RowFilter(tasks=False)).prefix == "assets/"
    tasks_only = region_for(RowFilter(assets=False))
    assert tasks_only.prefix == ""
    assert tasks_only.accepts("d/r/t/-1/k") and not tasks_only.accepts("assets/a/k")
    # A dag named "assets": its task objects are 5 segments deep, never an asset's 3.
    assert tasks_only.accepts("assets/r/t/-1/k")
    mapped = region_for(RowFilter(dag_id="d", run_id="r", map_index=1))
    assert mapped.prefix == "d/r/"
    assert mapped.accepts("d/r/t/1/k") and not mapped.accepts("d/r/t/-1/k") and not mapped.accepts("d/r/t/1")
    assert region_for(RowFilter(asset_uri="s3://b/k", tasks=False), ["nm"]).prefix == "assets/nm/"


# --------------------------------------------------------------------------- SQLite + file://


@pytest.mark.slow
def test_scan_joins_what_a_worker_wrote(scan_home: AirflowEnv) -> None:
    entries, scan = run_scan(worker_env_of(scan_home))
    assert scan.complete and scan.incomplete_reason is None
    assert len(entries) == N_OBJECTS == scan.objects_listed == scan.refs_joined
    assert_path_order(entries)
    files = sorted(str(p) for p in scan_home.bucket_dir.rglob("*") if p.is_file())
    assert sorted(e.obj.url.path for e in entries if e.obj) == files
    for entry in entries:
        assert entry.obj is not None and len(entry.referrers) == 1, entry
        referrer = entry.referrers[0]
        assert str(referrer.url) == str(entry.obj.url) == f"{scan_home.bucket_url}/{entry.path}"
        assert entry.path.endswith(".gz")
        assert entry.obj.size == Path(entry.obj.url.path).stat().st_size
        assert entry.obj.modified is not None and entry.obj.modified.tzinfo is not None
    assert scan.outside_count == 0 and scan.other_connection_count == 0
    wheres = set().union(*(row_where(e) for e in entries))
    assert ("writer", -1, "tiny") not in wheres  # inline: no object, not joined
    assert ("writer", -1, "a/b") in wheres and (None, -1, "a/b") in wheres and ("mapped", 2, "m") in wheres


@pytest.mark.slow
def test_scan_finds_planted_problems_sqlite_file(scan_home: AirflowEnv, tmp_path: Path) -> None:
    home = scan_home
    base = home.bucket_dir
    run_id = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=SCAN_DAG)[0][0]
    # dangling: the object of writer/a-b is gone
    dangling_ref = ref_of_row(home, "writer", "a-b")
    Path(dangling_ref.removeprefix("file://")).unlink()
    # orphan: an object no row references (old), and statectl's reserved object (skipped)
    orphan = Path(ref_of_row(home, "writer", "k0").removeprefix("file://")).parent / "orphan.gz"
    orphan.write_bytes(gzip.compress(b'"lost"'))
    make_old(orphan)
    (base / ".statectl~lock").write_text("lock")
    # outside the base path: a row pointing at a file elsewhere
    elsewhere = tmp_path / "elsewhere" / "x.gz"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(gzip.compress(b"1"))
    set_row(home, "writer", "Z", wrapper(elsewhere.as_uri()))
    # the same path under another scheme: mapped[0] now refers to writer/k0's object via local://
    k0 = ref_of_row(home, "writer", "k0")
    mapped0_object = ref_of_row(home, "mapped", "m", 0)
    set_row(home, "mapped", "m", wrapper("local://" + k0.removeprefix("file://")), 0)

    entries, scan = run_scan(worker_env_of(home))
    assert scan.complete, scan.incomplete_reason
    assert_path_order(entries)
    by_path = {e.path: e for e in entries}
    rel = dangling_ref.removeprefix(f"{home.bucket_url}/")
    assert by_path[rel].obj is None and row_where(by_path[rel]) == {("writer", -1, "a-b")}
    orphan_rel = str(orphan.relative_to(base))
    assert orphan_rel == f"{SCAN_DAG}/{quote(run_id, safe='')}/writer/-1/orphan.gz"
    assert by_path[orphan_rel].referrers == [] and by_path[orphan_rel].obj is not None
    assert not any(".statectl~" in p for p in by_path)
    k0_rel = k0.removeprefix(f"{home.bucket_url}/")
    assert row_where(by_path[k0_rel]) == {("writer", -1, "k0"), ("mapped", 0, "m")}
    assert {str(r.url) for r in by_path[k0_rel].referrers} == {k0, "local://" + k0.removeprefix("file://")}
    assert by_path[mapped0_object.removeprefix(f"{home.bucket_url}/")].referrers == []  # now an orphan
    z_object = f"{SCAN_DAG}/{quote(run_id, safe='')}/writer/-1/Z.gz"
    assert by_path[z_object].referrers == []  # its row now points elsewhere
    assert scan.other_connection_count == 1
    assert scan.outside_count == 1
    [outside] = scan.outside_sample
    assert outside.ref == elsewhere.as_uri() and outside.row.key == "Z" and "outside" in outside.reason
    orphans = sorted(e.path for e in entries if not e.referrers)
    assert orphans == sorted([orphan_rel, z_object, mapped0_object.removeprefix(f"{home.bucket_url}/")])
    assert [e.path for e in entries if e.obj is None] == [rel]


FILTERS: list[tuple[str, RowFilter, Any]] = [
    ("dag", RowFilter(dag_id=SCAN_DAG), lambda w: w[0] is not None),
    ("task", RowFilter(dag_id=SCAN_DAG, run_id="RUN", task_id="mapped"), lambda w: w[0] == "mapped"),
    ("map index", RowFilter(dag_id=SCAN_DAG, run_id="RUN", map_index=1), lambda w: w[:2] == ("mapped", 1)),
    ("task, no run", RowFilter(dag_id=SCAN_DAG, task_id="writer"), lambda w: w[0] == "writer"),
    ("tasks", RowFilter(assets=False), lambda w: w[0] is not None),
    ("assets", RowFilter(tasks=False), lambda w: w[0] is None),
    ("asset", RowFilter(asset_name=SCAN_ASSET, tasks=False), lambda w: w[0] is None),
    ("asset uri", RowFilter(asset_uri="file:///tmp/statectl-scan-asset", tasks=False), lambda w: w[0] is None),
    ("other dag", RowFilter(dag_id="nope"), lambda w: False),
]


@pytest.mark.slow
def test_scan_filters_narrow_both_sides(scan_home: AirflowEnv) -> None:
    env = worker_env_of(scan_home)
    run_id = scan_home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=SCAN_DAG)[0][0]
    full, _ = run_scan(env)
    # an orphan in the mapped task's folder: only filters that cover it list it
    mapped_dir = scan_home.bucket_dir / SCAN_DAG / quote(run_id, safe="") / "mapped" / "1"
    (mapped_dir / "stray.gz").write_bytes(gzip.compress(b"2"))
    for name, flt, wanted in FILTERS:
        if flt.run_id == "RUN":
            flt = RowFilter(dag_id=flt.dag_id, run_id=run_id, task_id=flt.task_id, map_index=flt.map_index)
        entries, scan = run_scan(env, flt)
        assert scan.complete, name
        assert_path_order(entries)
        expected = [e.path for e in full if all(wanted(w) for w in row_where(e))]
        stray = f"{SCAN_DAG}/{quote(run_id, safe='')}/mapped/1/stray.gz"
        if wanted(("mapped", 1, "stray.gz")):
            expected = sorted([*expected, stray])
        assert [e.path for e in entries] == expected, name
        assert all(e.obj is not None for e in entries), name


# --------------------------------------------------------------------------- PostgreSQL + S3 (conn_id)


@pytest.mark.slow
def test_scan_postgres_s3(
    pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = pg_airflow_home
    env = s3_written(home, s3_bucket, tmp_path)
    for name, value in s3_bucket.conn_env.items():  # Airflow resolves the conn_id from the process environment
        monkeypatch.setenv(name, value)
    client = s3_bucket.client()
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]}
    assert len(listed) == N_OBJECTS

    entries, scan = run_scan(env)
    assert scan.complete and len(entries) == N_OBJECTS
    assert_path_order(entries)
    for entry in entries:
        assert entry.obj is not None and len(entry.referrers) == 1
        key = f"state/{entry.path}"
        assert entry.obj.size == listed[key]["Size"]
        assert entry.obj.modified == listed[key]["LastModified"]
        assert str(entry.referrers[0].url) == str(entry.obj.url) == s3_bucket.url(key)

    # plant: a deleted object, an orphan, a reserved object, a ref elsewhere, a ref under another conn_id
    dangling = ref_of_row(home, "writer", "a-b")
    client.delete_object(Bucket=s3_bucket.bucket, Key=dangling.split(f"{s3_bucket.bucket}/", 1)[1])
    client.put_object(Bucket=s3_bucket.bucket, Key="state/orphan/x.gz", Body=gzip.compress(b"1"))
    client.put_object(Bucket=s3_bucket.bucket, Key="state/.statectl~lock", Body=b"lock")
    set_row(home, "writer", "Z", wrapper(s3_bucket.url("elsewhere/x.gz")))
    k0 = ref_of_row(home, "writer", "k0")
    set_row(home, "mapped", "m", wrapper(k0.replace(f"{s3_bucket.conn_id}@", "other_conn@")), 0)

    entries, scan = run_scan(env)
    assert scan.complete, scan.incomplete_reason
    assert_path_order(entries)
    by_path = {e.path: e for e in entries}
    prefix = s3_bucket.url("state/")
    assert by_path[dangling.removeprefix(prefix)].obj is None
    assert by_path["orphan/x.gz"].referrers == [] and by_path["orphan/x.gz"].obj is not None
    assert not any(".statectl~" in p for p in by_path)
    assert row_where(by_path[k0.removeprefix(prefix)]) == {("writer", -1, "k0"), ("mapped", 0, "m")}
    assert scan.other_connection_count == 1
    assert scan.outside_count == 1 and scan.outside_sample[0].ref == s3_bucket.url("elsewhere/x.gz")
    # a filter on the mapped task: its own folder, and the k0 object is not in it
    run_id = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=SCAN_DAG)[0][0]
    entries, scan = run_scan(env, RowFilter(dag_id=SCAN_DAG, run_id=run_id, task_id="mapped"))
    assert [e.path.split("/")[2:4] for e in entries] == [["mapped", "0"], ["mapped", "1"], ["mapped", "2"]]
    assert entries[0].referrers == []  # mapped[0]'s own object: its row now points at k0


# --------------------------------------------------------------------------- remote listings


LISTING_NAMES = ["a-b", "a/x", "a/x/y", "a0", "a.b", "Z", "0", "~t", "%C3%A9", "\u00e9", "b/c/d/e"]


def _expected_listing(names: list[str]) -> list[str]:
    return sorted(f"state/{n}" for n in names)


def test_s3_listing_pages_in_key_order(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than one page (1000 keys), folder markers skipped, sizes and times from the listing."""
    from concurrent.futures import ThreadPoolExecutor

    for name, value in s3_bucket.conn_env.items():
        monkeypatch.setenv(name, value)
    client = s3_bucket.client()
    names = LISTING_NAMES + [f"p/{i:04d}" for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=s3_bucket.bucket, Key=f"state/{n}", Body=n.encode()), names))
    client.put_object(Bucket=s3_bucket.bucket, Key="state/marker/", Body=b"")  # a folder marker, not an object
    client.put_object(Bucket=s3_bucket.bucket, Key="other/x", Body=b"x")  # outside the base
    base = ObjectURL.parse(s3_bucket.url("state"))
    listed = list(Buckets().iter_listing(base))
    assert [o.path for o in listed] == [f"{s3_bucket.bucket}/{k}" for k in _expected_listing(names)]
    assert all(o.size == len(o.path.split("/", 2)[2].encode()) and o.modified is not None for o in listed)
    under_a = [o.path for o in Buckets().iter_listing(base, "a/")]
    assert under_a == [f"{s3_bucket.bucket}/state/a/x", f"{s3_bucket.bucket}/state/a/x/y"]
    assert_by_folder_is_the_listing(base, listed)
    # Times as botocore's own parser reads them, from the listing (ISO 8601) and from a HEAD (an HTTP date).
    buckets = Buckets()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.bucket)
    as_boto = {o["Key"]: o["LastModified"] for page in pages for o in page["Contents"]}
    assert {o.path.split("/", 1)[1]: o.modified for o in buckets.iter_listing(base)} == {
        k: as_boto[k] for k in _expected_listing(names)
    }
    (info,) = buckets.stat_many([base.child("p", "0001")])
    assert not isinstance(info, Exception)
    assert info.modified == client.head_object(Bucket=s3_bucket.bucket, Key="state/p/0001")["LastModified"]
    # The fast path is in use: the client's endpoint makes each answer's parser with it.
    parser = buckets.fs(base).connect()._endpoint._response_parser_factory.create_parser("rest-xml")
    assert isinstance(parser._timestamp_parser, partial) and parser._timestamp_parser.func is parse_timestamp


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)), st.booleans())
def test_timestamps_read_as_botocore_reads_them(when: datetime, millis: bool) -> None:
    from botocore.utils import parse_timestamp as botocore_parse

    text = when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{when.microsecond // 1000:03d}" if millis else "") + "Z"
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    for value in (text, header):
        assert parse_timestamp(botocore_parse, value) == botocore_parse(value)


def assert_by_folder_is_the_listing(base: ObjectURL, listed: list[Any]) -> None:
    """Folder by folder (split down a level or two, several at once) lists exactly the same, sizes and
    times included; keeping some top-level names keeps exactly their objects."""
    expected = [(o.path, o.size, o.modified) for o in listed]
    for ahead in (1, 4):
        by_folder = listing.iter_listing_by_folder(base, _every, Buckets().fs, ahead=ahead)
        assert [(o.path, o.size, o.modified) for o in by_folder] == expected
    root = len(base.path) + 1
    kept = [o.path for o in Buckets().iter_listing_by_folder(base, lambda name: name in ("a", "b", "Z"))]
    assert kept == [p for p, _, _ in expected if p[root:].split("/", 1)[0] in ("a", "b", "Z")]


def test_gcs_listing_in_key_order(gcs_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in gcs_bucket.env.items():
        monkeypatch.setenv(name, value)
    fs = gcs_bucket.fs()
    for name in LISTING_NAMES:
        fs.pipe(f"{gcs_bucket.bucket}/state/{name}", name.encode())
    fs.pipe(f"{gcs_bucket.bucket}/other/x", b"x")
    base = ObjectURL.parse(gcs_bucket.url("state"))
    listed = list(Buckets().iter_listing(base))
    assert [o.path for o in listed] == [f"{gcs_bucket.bucket}/{k}" for k in _expected_listing(LISTING_NAMES)]
    assert all(o.size == len(o.path.split("/", 2)[2].encode()) and o.modified is not None for o in listed)
    assert_by_folder_is_the_listing(base, listed)


@pytest.mark.slow
def test_scan_says_incomplete_when_a_ref_cannot_be_placed(scan_home: AirflowEnv) -> None:
    # Under another scheme, with an empty segment: its text cannot be ordered like the listing's paths.
    k0 = ref_of_row(scan_home, "writer", "k0")
    odd = "local://" + k0.removeprefix("file://").replace("/writer/", "/writer//")
    set_row(scan_home, "mapped", "m", wrapper(odd), 1)
    entries, scan = run_scan(worker_env_of(scan_home))
    assert not scan.complete and "could not be placed" in (scan.incomplete_reason or "")
    assert scan.outside_count == 1 and scan.outside_sample[0].ref == odd
    assert len(entries) == N_OBJECTS  # everything else is still joined
