"""Object byte parity on remote stores: S3 (moto, through an Airflow conn_id) and GCS (emulator).

S3: the installed provider runs in-process with base ``s3://<conn_id>@<bucket>/state``; the connection
comes from the s3_bucket fixture's ``AIRFLOW_CONN_*`` variable, resolved by Airflow's own secrets
lookup at call time (so no subprocess is needed). Raw object bytes are fetched with boto3,
independently of both Airflow and statectl.

GCS: apache-airflow-providers-google is not installed, so no Airflow filesystem is registered for
``gs://`` and the provider cannot run there at all (asserted below). statectl falls back to fsspec's
gcsfs. The reference bytes are the provider's own output for the same value and object name on a
local ``file://`` base, and objects are read back with plain gcsfs, independently of statectl.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from statectl.core import codec
from statectl.core.codec import Location
from statectl.core.config import Config
from statectl.core.layout import ObjectURL
from statectl.core.scopes import AssetScope, TaskScope
from statectl.stores.bucket import Buckets, ObjectExists
from statectl.stores.store import StateStore
from tests.infra import GcsBucket, S3Bucket
from tests.parity_support import (
    decompress,
    normalized,
    provider_configured,
    provider_module,
    worker_column_text,
)

COMPRESSIONS = [None, "gzip", "bz2", "xz", "lzma", "zip"]
VALUE = {"payload": "x" * 80, "unicode": "ünï ☃ 😀", "n": [1, 2.5, True, None]}
IDS = ("dag/a b", "manual__2024-01-01T00:00:00+00:00", "task:1%", 2)
KEY = "job/id:1 x%?#"


@pytest.fixture(autouse=True)
def fresh_airflow_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow caches one filesystem per (protocol, conn_id) for the process: start each test without
    one an earlier test (e.g. with no endpoint for the same conn_id) may have left behind."""
    import airflow.sdk.io.store as store

    monkeypatch.setattr(store, "_STORE_CACHE", {})


def _sdk_scopes(kind: str) -> tuple[Any, Any]:
    import airflow.sdk.state as sdk

    if kind == "task":
        return sdk.TaskScope(*IDS), TaskScope(*IDS)
    return sdk.AssetScope(name="asset one/ü", uri="s3://x/y"), AssetScope(name="asset one/ü", uri="s3://x/y")


# -- S3 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["task", "asset"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_s3_conn_id_object_parity(s3_bucket: S3Bucket, tmp_path: Path, kind: str, compression: str | None) -> None:
    provider = provider_module()
    base = s3_bucket.url("state")
    assert base.startswith(f"s3://{s3_bucket.conn_id}@")
    client = s3_bucket.client()
    with provider_configured(base, threshold=10, compression=compression, extra_env=s3_bucket.conn_env) as env:
        backend = provider.StateStoreObjectStorageBackend()
        p_scope, s_scope = _sdk_scopes(kind)
        serialize = getattr(backend, f"serialize_{kind}_state_store_to_ref")
        deserialize = getattr(backend, f"deserialize_{kind}_state_store_from_ref")
        ref = serialize(value=VALUE, key=KEY, scope=p_scope)

        store = StateStore(Config(environ={**env, "AIRFLOW_HOME": str(tmp_path)}))
        url = store.object_url_for(s_scope, KEY)
        assert str(url) == ref and url.conn_id == s3_bucket.conn_id
        encoded = codec.encode(VALUE, offload=True, threshold=store.config.threshold, url=url)
        assert encoded.location is Location.OBJECT
        assert encoded.column_text == worker_column_text(ref)

        s3_key = url.path.split("/", 1)[1]
        assert s3_bucket.keys() == [s3_key]
        provider_bytes = client.get_object(Bucket=s3_bucket.bucket, Key=s3_key)["Body"].read()
        assert decompress(provider_bytes, compression) == json.dumps(VALUE).encode()

        # statectl reads the provider's object through the same conn_id...
        value, read_url = store.decode(codec.classify(encoded.column_text))
        assert value == VALUE and str(read_url) == ref

        # ...and writes byte-identical objects (modulo codec timestamps) that the provider reads.
        client.delete_object(Bucket=s3_bucket.bucket, Key=s3_key)
        Buckets().write_text(url, encoded.object_text, compression)
        statectl_bytes = client.get_object(Bucket=s3_bucket.bucket, Key=s3_key)["Body"].read()
        assert normalized(statectl_bytes, compression) == normalized(provider_bytes, compression)
        if compression not in ("gzip", "zip"):
            assert statectl_bytes == provider_bytes
        assert deserialize(ref) == VALUE
        assert s3_bucket.keys() == [s3_key]

        # The batched path migrate uses (one PUT, verified by checksum) writes the same bytes.
        client.delete_object(Bucket=s3_bucket.bucket, Key=s3_key)
        assert Buckets().write_many([(url, encoded.object_text)], compression) == [None]
        batched_bytes = client.get_object(Bucket=s3_bucket.bucket, Key=s3_key)["Body"].read()
        assert normalized(batched_bytes, compression) == normalized(provider_bytes, compression)
        assert deserialize(ref) == VALUE

        # ... and so does its create-if-absent variant (a conditional PUT).
        client.delete_object(Bucket=s3_bucket.bucket, Key=s3_key)
        assert Buckets().write_many([(url, encoded.object_text)], compression, if_absent=True) == [None]
        conditional_bytes = client.get_object(Bucket=s3_bucket.bucket, Key=s3_key)["Body"].read()
        assert normalized(conditional_bytes, compression) == normalized(provider_bytes, compression)
        assert deserialize(ref) == VALUE


def test_s3_inline_below_threshold_writes_nothing(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    provider = provider_module()
    small = {"a": 1}
    with provider_configured(
        s3_bucket.url("state/"), threshold=len(json.dumps(small)) + 1, compression="gzip", extra_env=s3_bucket.conn_env
    ) as env:
        p_scope, s_scope = _sdk_scopes("task")
        ref = provider.StateStoreObjectStorageBackend().serialize_task_state_store_to_ref(
            value=small, key=KEY, scope=p_scope
        )
        store = StateStore(Config(environ={**env, "AIRFLOW_HOME": str(tmp_path)}))
        encoded = codec.encode(
            small, offload=True, threshold=store.config.threshold, url=store.object_url_for(s_scope, KEY)
        )
        assert encoded.column_text == worker_column_text(ref) and encoded.location is Location.INLINE
        assert store.decode(codec.classify(encoded.column_text)) == (small, None)
    assert s3_bucket.keys() == []


# -- GCS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_gcs_object_bytes_match_provider_output(
    gcs_bucket: GcsBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    provider = provider_module()
    for k, v in gcs_bucket.env.items():
        monkeypatch.setenv(k, v)
    p_scope, s_scope = _sdk_scopes("task")
    # The reference: what the provider writes for this value under the same relative object name.
    local_base = (tmp_path / "ref").as_uri()
    with provider_configured(local_base, compression=compression):
        ref = provider.StateStoreObjectStorageBackend().serialize_task_state_store_to_ref(
            value=VALUE, key=KEY, scope=p_scope
        )
    reference = Path(ObjectURL.parse(ref).path).read_bytes()
    relative = ObjectURL.parse(ref).path.removeprefix(str(tmp_path / "ref"))

    gs_base = gcs_bucket.url("state")
    config = Config(
        environ={
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__WORKERS__STATE_STORE_BACKEND": "airflow.providers.common.io.state_store.backend."
            "StateStoreObjectStorageBackend",
            "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH": gs_base,
            "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": compression or "",
            **gcs_bucket.env,
        }
    )
    store = StateStore(config)
    url = store.object_url_for(s_scope, KEY)
    assert str(url) == gs_base + relative  # same layout as the provider's
    encoded = codec.encode(VALUE, offload=True, threshold=0, url=url)

    fs = gcs_bucket.fs()
    store.buckets.write_text(url, encoded.object_text, compression)
    fs.invalidate_cache()
    written = fs.cat(url.path)
    assert decompress(written, compression) == json.dumps(VALUE).encode()
    if compression == "gzip":
        # gzip may record the file name (FNAME) from the file object; compare the rest of the header
        # and the whole deflate stream + trailer exactly.
        assert written[:3] == reference[:3] and written[9:10] == reference[9:10]
        assert written[-8:] == reference[-8:]
        assert gzip_payload(written) == gzip_payload(reference)
    elif compression == "zip":
        # A GCS upload is not seekable, so zipfile streams the member with a data descriptor (flag
        # bit 3) where a local file gets sizes in the local header: the archive layout depends on the
        # target store, not on who writes. Same single member name and content.
        assert zip_members(written) == zip_members(reference)
    else:
        assert normalized(written, compression) == normalized(reference, compression)

    # statectl reads an object uploaded with plain gcsfs (the provider's bytes) as the value.
    fs.pipe(url.path, reference)
    store.buckets.fs(url).invalidate_cache()
    value, read_url = store.decode(codec.classify(encoded.column_text))
    assert value == VALUE and read_url == url
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_bucket.endpoint_url


def gzip_payload(data: bytes) -> bytes:
    """The deflate stream and trailer of a single-member gzip file (after the optional FNAME)."""
    flags = data[3]
    pos = 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + int.from_bytes(data[pos : pos + 2], "little")
    if flags & 0x08:  # FNAME
        pos = data.index(b"\0", pos) + 1
    if flags & 0x10:  # FCOMMENT
        pos = data.index(b"\0", pos) + 1
    return data[pos:]


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(name, z.read(name)) for name in z.namelist()]


# -- create-if-absent writes (migrate's one-PUT path, prune's lock) ---------------------------------


def _if_absent_semantics(buckets: Buckets, base: ObjectURL, listing: Any) -> bool:
    """Probe the store, then check what create-if-absent means there; return what the probe said."""
    honoured = buckets.honours_if_absent(base)
    assert listing() == []  # the probe removed its object
    url = base.child("dag", "run", "task", "-1", "key.gz")
    assert buckets.write_many([(url, '{"v": 1}')], "gzip", if_absent=honoured) == [None]
    if honoured:
        [occupied] = buckets.write_many([(url, '{"v": 2}')], "gzip", if_absent=True)
        assert isinstance(occupied, ObjectExists)
        assert buckets.read_text(url) == '{"v": 1}'  # untouched
    assert buckets.write_many([(url, '{"v": 3}')], "gzip") == [None]  # a plain write still overwrites
    assert buckets.read_text(url) == '{"v": 3}'
    return honoured


def test_if_absent_on_local_files(tmp_path: Path) -> None:
    base = ObjectURL.parse((tmp_path / "state").as_uri())
    listing = lambda: sorted(p.name for p in (tmp_path / "state").glob(".*"))  # noqa: E731
    (tmp_path / "state").mkdir()
    assert _if_absent_semantics(Buckets(), base, listing) is True
    assert not [p for p in (tmp_path / "state").rglob("*.tmp")]  # no temporary file left behind


def test_if_absent_on_s3_through_conn_id(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_bucket.conn_env.items():
        monkeypatch.setenv(k, v)
    base = ObjectURL.parse(s3_bucket.url("state"))
    # moto, like AWS S3 since 2024, refuses a PUT with If-None-Match: * onto an existing key.
    assert _if_absent_semantics(Buckets(), base, s3_bucket.keys) is True


def test_if_absent_on_gcs(gcs_bucket: GcsBucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in gcs_bucket.env.items():
        monkeypatch.setenv(k, v)
    base = ObjectURL.parse(gcs_bucket.url("state"))
    fs = gcs_bucket.fs()
    buckets = Buckets()
    # gcp-storage-emulator accepts ifGenerationMatch=0 and overwrites anyway: the probe's second create
    # is not refused, so the verdict is no, and writes take the checked path (plain writes, read back).
    honoured = _if_absent_semantics(buckets, base, lambda: [p for p in fs.find(gcs_bucket.bucket) if "statectl~" in p])
    assert honoured is False
    assert buckets.honours_if_absent(base) is False  # the same verdict for the rest of the run
    # Why the verdict must be no: a "create-if-absent" write onto an existing object replaces it here.
    url = base.child("dag", "run", "task", "-1", "key.gz")
    assert buckets.write_many([(url, '{"v": 4}')], "gzip", if_absent=True) == [None]
    assert buckets.read_text(url) == '{"v": 4}'


def test_if_absent_probe_says_no_where_hard_links_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE mounts refuse hard links: the probe says so and writes take the checked path."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    buckets = Buckets()
    base = ObjectURL.parse((tmp_path / "state").as_uri())
    assert buckets.honours_if_absent(base) is False
    assert list((tmp_path / "state").iterdir()) == []  # neither the probe nor a temporary file is left
    url = base.child("dag", "run", "task", "-1", "key")
    assert buckets.write_many([(url, '{"v": 1}')], None) == [None]
    assert buckets.read_text(url) == '{"v": 1}'
