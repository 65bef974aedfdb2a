"""The object stores the benchmarks run against, each reached through a real Airflow connection, each counting
the requests it serves by HTTP method and a coarse kind (list, upload, download, metadata, delete, ...).

- ``s3``: moto's server (a thread of this process) through an ``aws`` connection; its WSGI app is wrapped.
- ``gcs``: gcp-storage-emulator, in memory (a thread of this process; its listen backlog widened as the tests
  do) through a ``google_cloud_platform`` connection (anonymous, ``gcs.endpoint``, ``project``); its
  http.server request handler is replaced by a subclass that counts each request it parses. Its bucket keeps
  no soft-deleted objects and it does not re-serialise all metadata on every write (see GcsStore.start).
- ``s3-latency``: moto's S3 behind benchmarks/latency_bed.py's middleware (a thread of this process): every request
  delayed (20 ms, 60 ms per listing page / bulk delete), optionally failed at a seeded fraction; reached through an
  ``aws`` connection like ``s3``. The harness's own set-up traffic goes to the same moto undelayed (uncounted).
  Tuned by start_store's keywords or, for the benchmarks, ``STATECTL_BENCH_S3_OP_MS``, ``..._LIST_MS``,
  ``..._FAULT_FRACTION``, ``..._FAULT_SEED``, ``..._FAULT_KINDS`` (comma-separated), ``..._FAULT_TIMEOUT_S``.
- ``azure``: Azurite (``azurite-blob``, node, in memory) through a ``wasb`` connection with a
  ``connection_string``. Azurite is another process, so the connection string points at a small counting
  reverse proxy on 127.0.0.1 (a threaded http.server in this process) that forwards every request to it.
  The harness's own set-up traffic goes to Azurite directly.

Every store is started by :func:`start_store` and stopped by its ``close()`` (idempotent).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STORES = ("s3", "gcs", "azure", "s3-latency")
Kind = tuple[str, str]  # (HTTP method, coarse kind)

__all__ = ["STORES", "RequestCounter", "Store", "by_kind", "by_method", "per_object", "start_store"]


# --------------------------------------------------------------------------- counting


class RequestCounter:
    """Requests served, by (method, kind); thread-safe (the servers answer on several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Kind] = Counter()

    def add(self, method: str, kind: str) -> None:
        with self._lock:
            self._counts[(method, kind)] += 1

    def snapshot(self) -> Counter[Kind]:
        with self._lock:
            return Counter(self._counts)

    def since(self, before: Counter[Kind]) -> Counter[Kind]:
        return self.snapshot() - before

    def reset(self) -> Counter[Kind]:
        """Start counting from zero; return what was counted until now."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            return counts


def by_method(counts: Counter[Kind]) -> dict[str, int]:
    """{"PUT": n, ...}: what bench_migrate/bench_prune reported for S3 before they took a --store."""
    out: Counter[str] = Counter()
    for (method, _), n in counts.items():
        out[method] += n
    return dict(out)


def by_kind(counts: Counter[Kind]) -> dict[str, int]:
    """{"PUT upload": n, "GET list": m, ...}, sorted."""
    return {f"{method} {kind}": n for (method, kind), n in sorted(counts.items())}


def per_object(counts: Mapping[str, int], objects: int) -> dict[str, float]:
    """Requests of each kind (a by_kind answer) per object, 3 decimals."""
    return {key: round(n / max(objects, 1), 3) for key, n in counts.items()}


def _query(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True)


def s3_kind(method: str, path: str, query: str) -> str:
    """Path-style S3 (``/bucket`` or ``/bucket/key``)."""
    q = _query(query)
    _, _, key = path.lstrip("/").partition("/")
    if not key:  # the bucket itself
        if method == "GET" and not ({"location", "versioning", "acl", "policy", "tagging"} & q.keys()):
            return "list"
        if method == "POST" and "delete" in q:
            return "delete-batch"  # DeleteObjects: up to 1000 keys
        return "bucket"
    if method == "PUT":
        return "upload-part" if "partNumber" in q else "upload"
    if method == "POST":
        return "upload-complete" if "uploadId" in q else "upload-init" if "uploads" in q else "other"
    return {"GET": "download", "HEAD": "metadata", "DELETE": "delete"}.get(method, "other")


_GCS_OBJECT = re.compile(r"^(?:/storage/v1)?/b/[^/]+/o/(?P<rest>.+)$")
_GCS_OBJECTS = re.compile(r"^(?:/storage/v1)?/b/[^/]+/o$")


def gcs_kind(method: str, path: str, query: str) -> str:
    """The GCS JSON API as gcp-storage-emulator routes it (plus its XML-style /bucket/object)."""
    q = _query(query)
    if path.startswith("/upload/storage/v1/"):
        return "upload" if method == "POST" else "upload-chunk"
    if path.startswith("/download/storage/v1/"):
        return "download"
    if path.startswith("/batch/"):
        return "batch"
    if _GCS_OBJECTS.match(path):
        return "list" if method == "GET" else "upload"
    match = _GCS_OBJECT.match(path)
    if match:
        if re.search(r"/(copyTo|rewriteTo)/|/compose$", match["rest"]):
            return "copy"
        if method == "GET":
            return "download" if q.get("alt") == ["media"] else "metadata"
        return {"DELETE": "delete", "PATCH": "metadata-update"}.get(method, "other")
    if path.startswith(("/storage/v1/b", "/b")):
        return "bucket"
    if path.count("/") >= 2:  # /bucket/object (XML API style)
        return {"GET": "download", "PUT": "upload"}.get(method, "other")
    return "other"


def azure_kind(method: str, path: str, query: str) -> str:
    """Azure Blob (path style: ``/account/container[/blob]``)."""
    q = _query(query)
    comp = (q.get("comp") or [""])[0]
    restype = (q.get("restype") or [""])[0]
    parts = path.lstrip("/").split("/", 2)
    on_blob = len(parts) == 3 and parts[2] != ""
    if comp == "batch":
        return "batch"
    if not on_blob:
        if comp == "list":
            return "list"
        return "account" if restype in ("account", "service") or len(parts) < 2 else "container"
    if method == "PUT":
        return {"": "upload", "block": "upload-block", "blocklist": "upload-commit"}.get(comp, "metadata-update")
    if method == "GET":
        return "download" if not comp else "metadata"
    return {"HEAD": "metadata", "DELETE": "delete"}.get(method, "other")


# --------------------------------------------------------------------------- the stores


class Store:
    """One running object store with one bucket (container), and what a worker needs to reach it."""

    name: str  # s3 | gcs | azure
    label: str  # for the report
    scheme: str  # of the base path
    bucket: str  # bucket / container name
    conn_id: str
    conn_env: dict[str, str]  # AIRFLOW_CONN_<ID> (and the variables a worker needs with it)
    drop_env: tuple[str, ...] = ()  # variables that must not reach the tools (the store only via the connection)
    requests: RequestCounter

    def __init__(self) -> None:
        self.requests = RequestCounter()
        self._stops: list[Callable[[], None]] = []

    def url(self, path: str = "", conn_id: str | None = None) -> str:
        """``<scheme>://<conn_id>@<bucket>/<path>``: a base path that resolves through the connection."""
        return f"{self.scheme}://{conn_id or self.conn_id}@{self.bucket}/{path.lstrip('/')}"

    def conn_env_as(self, conn_id: str) -> dict[str, str]:
        """The variable of another connection to the same store (its own conn_id: for a tool, other credentials)."""
        raise NotImplementedError

    def start(self, workdir: Path) -> None:
        """Start the server(s) and create the bucket; every server started is registered with _on_close."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        raise NotImplementedError

    def empty(self) -> None:
        raise NotImplementedError

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        raise NotImplementedError

    def floor_spec(self) -> dict[str, Any]:
        """What benchmarks/bench_migrate.py's FLOOR script needs to reach the store directly (no Airflow)."""
        raise NotImplementedError

    def client_env(self) -> dict[str, str]:
        """Variables a plain client process of the store needs (beyond the connection)."""
        return {}

    def _on_close(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        """Stop everything started, last first; safe to call more than once."""
        while self._stops:
            stop = self._stops.pop()
            with contextlib.suppress(Exception):
                stop()


class S3Store(Store):
    name, label, scheme = "s3", "moto S3", "s3"

    def start(self, workdir: Path) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        from tests.infra import create_s3_bucket

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request from moto's server
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self._on_close(self.moto.stop)
        wsgi = self.moto._server  # werkzeug's server calls server.app for every request
        assert wsgi is not None
        app = wsgi.app
        counter = self.requests

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            method = environ["REQUEST_METHOD"]
            counter.add(method, s3_kind(method, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
            return app(environ, start_response)

        wsgi.app = counting
        host, port = self.moto.get_host_and_port()
        self.s3 = create_s3_bucket(f"http://{host}:{port}")
        self.bucket, self.conn_id, self.conn_env = self.s3.bucket, self.s3.conn_id, self.s3.conn_env
        self._client = self.s3.client()

    def keys(self) -> list[str]:
        return self.s3.keys()

    def empty(self) -> None:
        keys = self.keys()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def put(item: tuple[str, bytes]) -> None:
            self._client.put_object(Bucket=self.bucket, Key=item[0], Body=item[1])

        with ThreadPoolExecutor(max_workers=16) as pool:
            for _ in pool.map(put, objects.items()):
                pass

    def floor_spec(self) -> dict[str, Any]:
        return {"store": "s3", "endpoint": self.s3.endpoint_url, "bucket": self.bucket}

    def conn_env_as(self, conn_id: str) -> dict[str, str]:
        from tests.infra import s3_conn_env

        return s3_conn_env(self.floor_spec()["endpoint"], conn_id)


class S3LatencyStore(S3Store):
    """moto's S3 with a real store's latency (and optional faults): benchmarks/latency_bed.py."""

    name, scheme = "s3-latency", "s3"
    ENV = "STATECTL_BENCH_S3_"

    def __init__(
        self,
        op_ms: float | None = None,
        list_ms: float | None = None,
        fault_fraction: float | None = None,
        fault_seed: int | None = None,
        fault_kinds: tuple[str, ...] | None = None,
        fault_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        env = os.environ.get
        self.op_ms = op_ms if op_ms is not None else float(env(self.ENV + "OP_MS", "20"))
        self.list_ms = list_ms if list_ms is not None else float(env(self.ENV + "LIST_MS", "60"))
        fraction = fault_fraction if fault_fraction is not None else float(env(self.ENV + "FAULT_FRACTION", "0"))
        self.faults: Any = None
        if fraction > 0:
            from benchmarks.latency_bed import FAULT_KINDS, FaultPlan

            kinds = fault_kinds or tuple(env(self.ENV + "FAULT_KINDS", ",".join(FAULT_KINDS)).split(","))
            self.faults = FaultPlan(
                fraction,
                fault_seed if fault_seed is not None else int(env(self.ENV + "FAULT_SEED", "0")),
                kinds,
                fault_timeout_s if fault_timeout_s is not None else float(env(self.ENV + "FAULT_TIMEOUT_S", "61")),
            )
        self._fraction = fraction
        self._set_label()

    def _set_label(self) -> None:
        self.label = f"moto S3 + {self.op_ms:g} ms per request, {self.list_ms:g} ms per listing page / bulk delete"
        if self.faults is not None:
            self.label += f", faults on {self._fraction:g} of requests ({', '.join(self.faults.kinds)})"

    def set_latency(self, op_ms: float, list_ms: float) -> None:
        """The delays from now on (the server keeps running: the same bucket and objects at another latency)."""
        self.op_ms, self.list_ms = op_ms, list_ms
        self.bed.set_delays(op_ms, list_ms)
        self._set_label()

    def start(self, workdir: Path) -> None:
        from benchmarks.latency_bed import LatencyS3
        from tests.infra import create_s3_bucket, s3_conn_env

        self.bed = LatencyS3(self.op_ms, self.list_ms, self.faults, self.requests)
        self._on_close(self.bed.stop)
        self.s3 = create_s3_bucket(self.bed.direct_url)  # the harness: undelayed, uncounted, never faulted
        self.bucket, self.conn_id = self.s3.bucket, self.s3.conn_id
        self.endpoint_url = self.bed.endpoint_url
        self.conn_env = s3_conn_env(self.endpoint_url, self.conn_id)  # the tools: through the delays
        self._client = self.s3.client()

    def floor_spec(self) -> dict[str, Any]:
        return {"store": "s3", "endpoint": self.endpoint_url, "bucket": self.bucket}

    # The harness's set-up straight into moto's backend in this process: a PUT over HTTP costs moto and boto3
    # 4-5 ms of this process's CPU (200k objects: a quarter of an hour); the same FakeKeys either way.
    def keys(self) -> list[str]:
        from benchmarks.moto_index import key_names

        return key_names(self.bucket)

    def empty(self) -> None:
        from benchmarks.moto_index import delete_objects

        delete_objects(self.bucket, self.keys())

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        from benchmarks.moto_index import put_objects

        put_objects(self.bucket, objects)


def _counting_gcs_handler(counter: RequestCounter) -> type[BaseHTTPRequestHandler]:
    from gcp_storage_emulator.server import RequestHandler  # type: ignore[import-untyped]

    class CountingHandler(RequestHandler):  # type: ignore[misc]
        """The emulator's handler, counting each request once its request line and headers are parsed."""

        def parse_request(self) -> bool:
            parsed: bool = super().parse_request()
            if parsed:
                method = self.headers.get("x-http-method-override") or self.command
                split = urlsplit(self.path)
                counter.add(method, gcs_kind(method, split.path, split.query))
            return parsed

    return CountingHandler


class GcsStore(Store):
    name, label, scheme = "gcs", "gcp-storage-emulator (GCS)", "gs"
    drop_env = ("STORAGE_EMULATOR_HOST",)

    def start(self, workdir: Path) -> None:
        # gcsfs reads this once, at import: without it gcsfs >= 2026 probes over gRPC and stalls on the emulator.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import logging

        # The emulator logs an error for every GET of a missing object (a normal answer here: a 404).
        logging.getLogger("gcp_storage_emulator.storage").setLevel(logging.CRITICAL)
        from tests.infra import GCS_CONN_ID, create_gcs_bucket, gcs_conn_env, start_gcs_emulator

        self.server, self.endpoint = start_gcs_emulator()  # its listen backlog widened (tests/infra.py)
        self._on_close(self.server.stop)
        httpd = self.server._api._httpd  # a single-threaded http.server.HTTPServer
        httpd.RequestHandlerClass = partial(_counting_gcs_handler(self.requests), self.server._storage)
        report_error = httpd.handle_error
        counter = self.requests

        def handle_error(request: Any, client_address: Any) -> None:
            # A client that closed its connection before reading the answer (a BrokenPipeError in the emulator's
            # write): counted, without the traceback socketserver prints for it.
            if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                counter.add("(client)", "closed-before-answer")
            else:
                report_error(request, client_address)

        httpd.handle_error = handle_error
        storage = self.server._storage
        # Two costs of the in-memory emulator that grow with everything the bucket ever held, which no real store
        # has and which would make each run slower than the one before it: after every upload and every delete it
        # serialises ALL object metadata (live and soft-deleted) to JSON (`Storage._write_config_to_file`, read
        # back only by a new emulator on a data directory), and it keeps every deleted object (GCS's default
        # soft-delete policy, 7 days). The bench's bucket has no soft delete, and this instance no such dump.
        storage._write_config_to_file = lambda: None
        self.gcs = create_gcs_bucket(self.endpoint)
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b/{self.gcs.bucket}",
            data=json.dumps({"softDeletePolicy": {"retentionDurationSeconds": "0"}}).encode(),
            headers={"Content-Type": "application/json"},
            method="PATCH",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        assert storage._bucket_soft_delete_retention_seconds(self.gcs.bucket) == 0
        self.bucket, self.conn_id = self.gcs.bucket, GCS_CONN_ID
        self.conn_env = gcs_conn_env(self.endpoint)
        self._fs = self.gcs.fs()

    def keys(self) -> list[str]:
        root = f"{self.bucket}/"
        self._fs.invalidate_cache()
        return sorted(p.removeprefix(root) for p in self._fs.find(self.bucket))

    def empty(self) -> None:
        keys = self.keys()
        if keys:
            self._fs.rm([f"{self.bucket}/{k}" for k in keys])
        self._fs.invalidate_cache()

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        if objects:
            self._fs.pipe({f"{self.bucket}/{k}": v for k, v in objects.items()})
        self._fs.invalidate_cache()

    def floor_spec(self) -> dict[str, Any]:
        return {"store": "gcs", "endpoint": self.endpoint, "bucket": self.bucket}

    def conn_env_as(self, conn_id: str) -> dict[str, str]:
        from tests.infra import gcs_conn_env

        return gcs_conn_env(self.endpoint, conn_id)

    def client_env(self) -> dict[str, str]:
        return {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards each request to the upstream (one upstream connection per client connection), counting it."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDK's aiohttp transport expects
    server: CountingProxy
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self, body: bytes | None) -> tuple[http.client.HTTPResponse, bytes]:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        if body is not None and self.headers.get("Content-Length") is None:
            headers.append(("Content-Length", str(len(body))))
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, 120)
            try:
                self._upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers:
                    self._upstream.putheader(key, value)
                self._upstream.endheaders(body)
                response = self._upstream.getresponse()
                return response, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # Azurite closed an idle keep-alive connection before this request reached it: send it again.
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _serve(self) -> None:
        split = urlsplit(self.path)
        self.server.counter.add(self.command, self.server.kind(self.command, split.path, split.query))
        response, data = self._forward(self._body())
        self.send_response_only(response.status, response.reason)
        has_length = False
        for key, value in response.getheaders():
            if key.lower() in _HOP_BY_HOP:
                continue
            has_length = has_length or key.lower() == "content-length"
            self.send_header(key, value)
        if not has_length and self.command != "HEAD" and response.status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        if (response.getheader("Connection") or "").lower() == "close":
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()


class CountingProxy(ThreadingHTTPServer):
    """A reverse proxy on 127.0.0.1 in front of one upstream HTTP server, counting requests by kind."""

    daemon_threads = True
    request_queue_size = 128  # as many concurrent connects as the tools open

    def __init__(
        self, upstream_host: str, upstream_port: int, counter: RequestCounter, kind: Callable[[str, str, str], str]
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.counter, self.kind = counter, kind
        self._thread = threading.Thread(target=self.serve_forever, name="counting-proxy", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


class AzureStore(Store):
    name, label, scheme = "azure", "Azurite (Azure Blob)", "abfs"

    def start(self, workdir: Path) -> None:
        import logging

        from tests.infra_azure import AZURE_CONN_ID, azure_conn_env, create_container, start_azurite

        logging.getLogger("azure").setLevel(logging.WARNING)  # azure-core logs every request at INFO
        self.azurite = start_azurite(workdir / "azurite")
        self._on_close(self.azurite.stop)
        self.proxy = CountingProxy("127.0.0.1", self.azurite.port, self.requests, azure_kind)
        self._on_close(self.proxy.stop)
        self.container = create_container(self.azurite)  # the harness talks to Azurite directly
        self.bucket, self.conn_id = self.container.container, AZURE_CONN_ID
        # The tools (and the floor) talk to it through the proxy: same account, same key, the proxy's port.
        self.connection_string = self.azurite.connection_string.replace(
            f"127.0.0.1:{self.azurite.port}/", f"127.0.0.1:{self.proxy.port}/"
        )
        assert self.connection_string != self.azurite.connection_string
        self.conn_env = azure_conn_env(self.connection_string, AZURE_CONN_ID, "wasb")

    def keys(self) -> list[str]:
        return sorted(self.container.names())

    def empty(self) -> None:
        from tests.infra_azure import plant_blobs

        plant_blobs(self.container, (), replace=True)

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        from tests.infra_azure import plant_blobs

        plant_blobs(self.container, objects.items())

    def floor_spec(self) -> dict[str, Any]:
        return {"store": "azure", "connection_string": self.connection_string, "bucket": self.bucket}

    def conn_env_as(self, conn_id: str) -> dict[str, str]:
        from tests.infra_azure import azure_conn_env

        return azure_conn_env(self.connection_string, conn_id, "wasb")


def start_store(name: str, workdir: Path, **options: Any) -> Store:
    """Start the named store with a fresh bucket (container); the caller closes it. A start that fails (or is
    interrupted) stops whatever it had started. ``options`` go to the store's constructor (s3-latency's: op_ms,
    list_ms, fault_fraction, fault_seed, fault_kinds, fault_timeout_s)."""
    kinds: dict[str, type[Store]] = {"s3": S3Store, "gcs": GcsStore, "azure": AzureStore, "s3-latency": S3LatencyStore}
    if name not in kinds:
        raise ValueError(f"unknown store {name!r}: one of {', '.join(STORES)}")
    store = kinds[name](**options)
    try:
        store.start(workdir)
    except BaseException:
        store.close()
        raise
    return store
