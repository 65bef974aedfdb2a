"""An S3 endpoint on 127.0.0.1 with a real store's latency: moto's S3 app behind a WSGI middleware that sleeps before
every request (in the server's request thread, so concurrent requests overlap as they do on S3), counts it by kind
(benchmarks/stores.py's ``s3_kind``) and can inject faults at a seeded fraction of requests. A benchmark tool, not a
test fixture (issue 11, part 1).

- delay: ``op_ms`` (20 ms) for every GET / PUT / HEAD / DELETE / multipart step, ``list_ms`` (60 ms) for every listing
  page and every bulk delete (POST ?delete);
- faults (:class:`FaultPlan`): ``503`` (SlowDown), ``500`` (InternalError), ``reset`` (the connection closed with a
  TCP RST, no response), ``timeout`` (no answer for ``timeout_s``, then a 503: longer than the client's read timeout).
  The delay is served before the fault, as a real store's error also costs a round trip. Also, on request (not in
  the default kinds): ``lost`` (the store does the request, then the connection is reset before its answer),
  ``403`` (AccessDenied) and ``400`` (InvalidRequest), answers no retry may change. Tests switch faults at run time
  (``set_fraction``) and script the next requests' faults (``force``). The bed is also imported by tests/.

The bed also serves moto's app undelayed on a second port (``direct_url``): one moto, so the same buckets; for a
harness's own set-up traffic (filling / emptying a bucket), which is neither delayed nor counted nor faulted.
The delays can be changed while it serves (``set_delays``: several latencies in one benchmark run). moto lists
from a sorted index of each bucket (benchmarks/moto_index.py): its own listing sorts the whole bucket per page.

Usage (a self-measurement with a bare boto3 client, undelayed moto first for moto's own cost):

    .venv/bin/python benchmarks/latency_bed.py [--op-ms 20] [--list-ms 60] [--objects 200] [--concurrency 16]
                                               [--fault-fraction 0.1 --fault-seed 1 --read-timeout 2 --timeout-s 3]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stores import RequestCounter, by_kind, s3_kind

__all__ = ["ALL_FAULT_KINDS", "FAULT_KINDS", "FaultPlan", "LatencyMiddleware", "LatencyS3", "start_latency_s3"]

FAULT_KINDS = ("503", "500", "reset", "timeout")  # transient: what a throttled or flaky store does
ALL_FAULT_KINDS = (*FAULT_KINDS, "lost", "403", "400")  # also a request done but unanswered, and final answers
SLOW_KINDS = frozenset({"list", "delete-batch"})  # served after list_ms; every other kind after op_ms


class InjectedReset(ConnectionResetError):
    """Raised by the middleware for a "reset" fault; the request handler then drops the connection with an RST."""


@dataclass
class FaultPlan:
    """Which requests fail, and how: a seeded random.Random draws, per request in arrival order, whether it fails
    (probability ``fraction``) and then one of ``kinds`` uniformly; faults ``force``d first go to the next requests,
    one each. Thread-safe; ``injected`` counts by kind."""

    fraction: float
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    timeout_s: float = 61.0  # longer than botocore's default read timeout (60 s)
    injected: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        _check_kinds(self.kinds)
        if not self.kinds:
            raise ValueError(f"fault kinds must be some of {ALL_FAULT_KINDS}, not {self.kinds}")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._forced: deque[str | None] = deque()
        self.set_fraction(self.fraction)

    def set_fraction(self, fraction: float) -> None:
        """Change the fraction of faulted requests while the bed serves (0: no more faults)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fault fraction must be in [0, 1], not {fraction}")
        with self._lock:
            self.fraction = fraction

    def force(self, *kinds: str | None) -> None:
        """The next requests, in arrival order, get these faults (None: answered), before any drawn."""
        _check_kinds(tuple(k for k in kinds if k is not None))
        with self._lock:
            self._forced.extend(kinds)

    def draw(self) -> str | None:
        with self._lock:
            if self._forced:
                kind = self._forced.popleft()
            elif self._rng.random() >= self.fraction:
                return None
            else:
                kind = self._rng.choice(self.kinds)
            if kind is not None:
                self.injected[kind] += 1
            return kind

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.injected)


def _check_kinds(kinds: tuple[str, ...]) -> None:
    if set(kinds) - set(ALL_FAULT_KINDS):
        raise ValueError(f"fault kinds must be some of {ALL_FAULT_KINDS}, not {kinds}")


def _s3_error(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        "<RequestId>LATENCYBED</RequestId></Error>"
    ).encode()


_ERRORS = {
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": ("403 Forbidden", "AccessDenied", "Access Denied"),
    "400": ("400 Bad Request", "InvalidRequest", "Injected bad request."),
}


class LatencyMiddleware:
    """WSGI middleware: count the request by (method, s3_kind), sleep its delay, maybe fail it, else call ``app``."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        op_ms: float = 20.0,
        list_ms: float = 60.0,
        faults: FaultPlan | None = None,
        counter: RequestCounter | None = None,
    ) -> None:
        self.app = app
        self.set_delays(op_ms, list_ms)
        self.faults = faults
        self.counter = counter if counter is not None else RequestCounter()

    def set_delays(self, op_ms: float, list_ms: float) -> None:
        """Change the delays while serving (one float each, read once per request: no lock needed), so that one
        benchmark run measures several latencies on the same server and the same objects."""
        self.op_s, self.list_s = op_ms / 1000.0, list_ms / 1000.0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        kind = s3_kind(method, path, environ.get("QUERY_STRING", ""))
        self.counter.add(method, kind)
        delay = self.list_s if kind in SLOW_KINDS else self.op_s
        if delay > 0:
            time.sleep(delay)  # in this request's server thread: concurrent requests overlap
        fault = self.faults.draw() if self.faults is not None else None
        if fault is None:
            return self.app(environ, start_response)
        if fault == "lost":  # the store does the request; its answer never leaves
            answer = self.app(environ, lambda *_args, **_kwargs: lambda _data: None)
            for _ in answer:
                pass
            getattr(answer, "close", lambda: None)()
            raise InjectedReset("injected lost answer")
        _drain(environ)  # the request body, so that the answer is not a reset of its own
        if fault == "reset":
            raise InjectedReset("injected connection reset")
        if fault == "timeout":
            time.sleep(self.faults.timeout_s if self.faults is not None else 0)
            fault = "503"
        status, code, message = _ERRORS[fault]
        body = b"" if method == "HEAD" else _s3_error(code, message, path)
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


def _drain(environ: dict[str, Any]) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ.get("wsgi.input")
    while length > 0 and stream is not None:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)


def _handler_class() -> type:
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class Handler(MotoRequestHandler):
        """moto's handler; a request failed with InjectedReset ends its connection with an RST (SO_LINGER 0),
        without a byte of response and without the FIN a normal close sends first."""

        _reset = False

        def connection_dropped(self, error: BaseException, environ: dict[str, Any] | None = None) -> None:
            if isinstance(error, InjectedReset):
                self._reset = True
                self.close_connection = True
                return
            super().connection_dropped(error, environ)

        def finish(self) -> None:
            if not self._reset:
                super().finish()
                return
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            for stream in (self.wfile, self.rfile):
                with contextlib.suppress(Exception):
                    stream.close()
            self.connection.close()  # its last reference: the real close, an RST (socketserver's shutdown then fails)

    return Handler


class _Served:
    """One werkzeug threaded server on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: Callable[..., Iterable[bytes]], name: str) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_handler_class())
        # a request thread still sleeping (a "timeout") does not hold up exit (werkzeug's threaded server is a
        # ThreadingMixIn, which its type does not say)
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class LatencyS3:
    """moto's S3 behind a LatencyMiddleware (``endpoint_url``) and undelayed (``direct_url``), both in this process."""

    def __init__(
        self,
        op_ms: float = 20.0,
        list_ms: float = 60.0,
        faults: FaultPlan | None = None,
        counter: RequestCounter | None = None,
    ) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        from benchmarks import moto_index

        moto_index.install()  # listings at a real store's cost per page, not moto's sort of the whole bucket
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        app = DomainDispatcherApplication(create_backend_app)  # as moto's ThreadedMotoServer builds it
        self.middleware = LatencyMiddleware(app, op_ms=op_ms, list_ms=list_ms, faults=faults, counter=counter)
        self.counter, self.faults = self.middleware.counter, faults
        self._delayed = _Served(self.middleware, "latency-s3")
        try:
            self._direct = _Served(app, "latency-s3-direct")
        except BaseException:
            self._delayed.stop()
            raise
        self.endpoint_url, self.direct_url = self._delayed.url, self._direct.url

    def set_delays(self, op_ms: float, list_ms: float) -> None:
        self.middleware.set_delays(op_ms, list_ms)

    def stop(self) -> None:
        for served in (self._delayed, self._direct):
            with contextlib.suppress(Exception):
                served.stop()


def start_latency_s3(
    op_ms: float = 20.0, list_ms: float = 60.0, faults: FaultPlan | None = None
) -> tuple[str, RequestCounter, Callable[[], None]]:
    """Start the bed; return (endpoint_url, its request counter, stop)."""
    bed = LatencyS3(op_ms, list_ms, faults)
    return bed.endpoint_url, bed.counter, bed.stop


# --------------------------------------------------------------------------- self-measurement


def _client(endpoint: str, concurrency: int, read_timeout: float, retries: dict[str, Any] | None = None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(
        max_pool_connections=concurrency * 2,
        read_timeout=read_timeout,
        connect_timeout=5,
        retries=retries or {},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="statectl",
        aws_secret_access_key="statectl",
        region_name="us-east-1",
        config=config,
    )


def _run(calls: list[Callable[[], Any]], concurrency: int) -> tuple[float, list[Any], list[BaseException]]:
    """Run the calls (serially if concurrency is 1); return (seconds, answers, errors)."""
    from concurrent.futures import ThreadPoolExecutor

    answers: list[Any] = []
    errors: list[BaseException] = []

    def one(call: Callable[[], Any]) -> None:
        try:
            answers.append(call())
        except Exception as error:
            errors.append(error)

    start = time.perf_counter()
    if concurrency <= 1:
        for call in calls:
            one(call)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, calls))
    return time.perf_counter() - start, answers, errors


def measure(op_ms: float, list_ms: float, objects: int, concurrency: int) -> list[dict[str, Any]]:
    """The phases of the self-measurement on a fresh bed, without faults: one row per phase."""
    bed = LatencyS3(op_ms, list_ms)
    rows: list[dict[str, Any]] = []
    try:
        s3 = _client(bed.endpoint_url, concurrency, 60)
        bucket = "latency-bed"
        s3.create_bucket(Bucket=bucket)
        body = b"x" * 1024
        serial = [f"serial/{i:05d}" for i in range(objects)]
        parallel = [f"parallel/{i:05d}" for i in range(objects)]

        def phase(name: str, calls: list[Callable[[], Any]], n_in_flight: int) -> None:
            before = bed.counter.snapshot()
            seconds, _, errors = _run(calls, n_in_flight)
            sent = sum(bed.counter.since(before).values())
            rows.append(
                {
                    "phase": name,
                    "requests": sent,
                    "seconds": round(seconds, 3),
                    "ms_per_request": round(seconds * 1000 / max(sent, 1), 2),
                    "requests_per_s": round(sent / seconds, 1),
                    "errors": len(errors),
                }
            )

        def put(key: str) -> Callable[[], Any]:
            return lambda: s3.put_object(Bucket=bucket, Key=key, Body=body)

        def get(key: str) -> Callable[[], Any]:
            return lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        phase("PUT serial", [put(k) for k in serial], 1)
        phase(f"PUT {concurrency} in flight", [put(k) for k in parallel], concurrency)
        phase("GET serial", [get(k) for k in serial], 1)
        phase(f"GET {concurrency} in flight", [get(k) for k in parallel], concurrency)

        def head(key: str) -> Callable[[], Any]:
            return lambda: s3.head_object(Bucket=bucket, Key=key)

        phase("HEAD serial", [head(k) for k in serial], 1)

        def list_all() -> int:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 100})
            return sum(len(page.get("Contents", [])) for page in pages)

        phase("LIST pages of 100 (serial)", [list_all], 1)
        keys = serial + parallel
        batches = [keys[i : i + 100] for i in range(0, len(keys), 100)]

        def delete(batch: list[str]) -> Callable[[], Any]:
            return lambda: s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch]})

        phase("bulk DELETE of 100 (serial)", [delete(b) for b in batches], 1)
        assert list_all() == 0
        rows.append({"phase": "counts by kind", **by_kind(bed.counter.snapshot())})
    finally:
        bed.stop()
    return rows


def _read(answer: dict[str, Any]) -> dict[str, Any]:
    answer["Body"].read()
    return answer


def measure_faults(
    op_ms: float, list_ms: float, objects: int, concurrency: int, plan: FaultPlan, read_timeout: float, mode: str
) -> dict[str, Any]:
    """PUT then GET `objects` objects (`concurrency` in flight) against a faulty bed with botocore's retries
    (``mode``: legacy, standard or adaptive, its default attempts): what failed after them."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    bucket = "latency-bed-faults"
    bed = LatencyS3(op_ms, list_ms, plan)
    try:
        _client(bed.direct_url, 1, 60).create_bucket(Bucket=bucket)  # not faulted
        s3 = _client(bed.endpoint_url, concurrency, read_timeout, {"mode": mode})
        body = b"y" * 1024
        keys = [f"faults/{i:05d}" for i in range(objects)]
        out: dict[str, Any] = {"retry_mode": mode, "client_read_timeout_s": read_timeout}
        for name, make in (
            ("PUT", lambda k: lambda: s3.put_object(Bucket=bucket, Key=k, Body=body)),
            ("GET", lambda k: lambda: _read(s3.get_object(Bucket=bucket, Key=k))),
        ):
            injected_before, sent_before = plan.snapshot(), bed.counter.snapshot()
            seconds, answers, errors = _run([make(k) for k in keys], concurrency)
            retried = [a["ResponseMetadata"]["RetryAttempts"] for a in answers if isinstance(a, dict)]
            failed: Counter[str] = Counter()
            for error in errors:
                if isinstance(error, ClientError):
                    failed[f"{type(error).__name__} {error.response['Error'].get('Code')}"] += 1
                elif isinstance(error, BotoCoreError):
                    failed[type(error).__name__] += 1
                else:
                    failed[f"{type(error).__module__}.{type(error).__name__}"] += 1
            out[name] = {
                "client_calls": len(keys),
                "requests_sent": sum(bed.counter.since(sent_before).values()),
                "faults_injected": dict(plan.snapshot() - injected_before),
                "calls_failed_after_retries": len(errors),
                "failures": dict(failed),
                "successful_calls_that_retried": sum(1 for r in retried if r) if retried else None,
                "seconds": round(seconds, 2),
            }
        direct = _client(bed.direct_url, 1, 60)
        out["objects_stored"] = direct.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        return out
    finally:
        bed.stop()


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op-ms", type=float, default=20.0, help="delay of a GET / PUT / HEAD / DELETE (ms)")
    parser.add_argument("--list-ms", type=float, default=60.0, help="delay of a listing page / bulk delete (ms)")
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-baseline", action="store_true", help="skip the undelayed run (moto's own cost)")
    parser.add_argument("--fault-fraction", type=float, default=0.0, help="also run the fault phase at this fraction")
    parser.add_argument("--fault-seed", type=int, default=1)
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    parser.add_argument("--timeout-s", type=float, default=3.0, help="how long a 'timeout' fault withholds its answer")
    parser.add_argument("--read-timeout", type=float, default=2.0, help="the client's read timeout (fault phase)")
    parser.add_argument("--retry-mode", default="legacy", choices=("legacy", "standard", "adaptive"))
    args = parser.parse_args()

    report: dict[str, Any] = {}
    configs = [(args.op_ms, args.list_ms)] if args.no_baseline else [(0.0, 0.0), (args.op_ms, args.list_ms)]
    for op_ms, list_ms in configs:
        label = f"op {op_ms:g} ms, list {list_ms:g} ms"
        print(f"measuring: {label}", file=sys.stderr)
        report[label] = measure(op_ms, list_ms, args.objects, args.concurrency)
    if args.fault_fraction > 0:
        plan = FaultPlan(args.fault_fraction, args.fault_seed, tuple(args.fault_kinds.split(",")), args.timeout_s)
        print(f"measuring faults: {plan.fraction} of requests, kinds {plan.kinds}", file=sys.stderr)
        report["faults"] = measure_faults(
            args.op_ms, args.list_ms, args.objects, args.concurrency, plan, args.read_timeout, args.retry_mode
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
