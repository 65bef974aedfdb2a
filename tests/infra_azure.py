"""Azure Blob Storage for statectl's tests: Azurite (Microsoft's emulator, the npm package ``azurite``).

Nothing here is mocked. ``scripts/test`` installs Azurite with npm into ``.cache/azurite`` (git-ignored;
node and npm from Debian when missing). The server runs as a child process on a free 127.0.0.1 port with
in-memory persistence and no telemetry; it needs no network. Workers and statectl reach it exactly as
they reach a real account: through an Airflow connection (``AIRFLOW_CONN_<ID>``) whose
``connection_string`` extra names Azurite's well-known development account and its blob endpoint, which
the Azure provider's ``fs/adls.py:get_fs`` turns into adlfs's AzureBlobFileSystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.infra import free_port

ROOT = Path(__file__).resolve().parent.parent
AZURITE_PREFIX = ROOT / ".cache" / "azurite"
AZURITE_BLOB = AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft; not a secret anywhere).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_CONN_ID = "statectl_azure"


@dataclass
class Azurite:
    """A running azurite-blob process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def answers(self) -> bool:
        """Whether the blob service answers HTTP (any status: an unsigned request is refused with 403)."""
        try:
            with urllib.request.urlopen(f"{self.blob_endpoint}?comp=list", timeout=2) as response:
                response.read()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # node and anything it started
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_azurite(workdir: Path, timeout: float = 60) -> Azurite:
    """Start azurite-blob on a free 127.0.0.1 port (in memory, no telemetry) and wait until it answers."""
    if not AZURITE_BLOB.exists():
        raise RuntimeError(
            f"{AZURITE_BLOB} is missing: run scripts/test, or `npm install --prefix {AZURITE_PREFIX} azurite@3`"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _attempt in range(3):  # the free port may be taken between free_port() and azurite's bind
        port = free_port()
        log = workdir / f"azurite-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    str(AZURITE_BLOB),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(port),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                    "--disableTelemetry",
                ],
                cwd=workdir,  # azurite may write a debug log or a lock file to its working directory
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Azurite(process, port, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if server.answers():
                return server
            time.sleep(0.1)
        server.stop()
        last_log = log.read_text(errors="replace")
        if "EADDRINUSE" not in last_log:
            break
    raise RuntimeError(f"azurite-blob did not start:\n{last_log[-3000:]}")


def azure_conn_env(connection_string: str, conn_id: str = AZURE_CONN_ID, conn_type: str = "wasb") -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` for the Azure provider: a connection_string extra wins over every other field."""
    conn = {"conn_type": conn_type, "extra": {"connection_string": connection_string}}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


@dataclass
class AzureContainer:
    """One container of the Azurite account, with the connection workers and statectl use for it."""

    container: str
    connection_string: str
    conn_id: str
    conn_env: dict[str, str]

    def url(self, path: str = "") -> str:
        """The Airflow ObjectStoragePath URL, with the conn_id the Azure provider resolves."""
        return f"abfs://{self.conn_id}@{self.container}/{path.lstrip('/')}"

    def client(self) -> Any:
        """A plain azure-storage-blob ContainerClient (independent of Airflow, adlfs and statectl)."""
        from azure.storage.blob import ContainerClient

        return ContainerClient.from_connection_string(self.connection_string, self.container)

    def names(self, prefix: str | None = None) -> list[str]:
        with self.client() as cc:
            return [blob.name for blob in cc.list_blobs(name_starts_with=prefix)]

    def read(self, name: str) -> bytes:
        with self.client() as cc:
            data: bytes = cc.download_blob(name).readall()
            return data

    def put(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        with self.client() as cc:
            cc.upload_blob(name, data, overwrite=True, metadata=metadata)

    def delete(self, name: str) -> None:
        with self.client() as cc:
            cc.delete_blob(name)

    def snapshot(self) -> dict[str, bytes]:
        """Every blob's bytes by name."""
        return {name: self.read(name) for name in self.names()}

    def restore(self, blobs: dict[str, bytes]) -> None:
        """Make the container hold exactly these blobs."""
        plant_blobs(self, blobs.items(), replace=True)

    def properties(self, name: str) -> Any:
        with self.client() as cc:
            return cc.get_blob_client(name).get_blob_properties()


def create_container(server: Azurite, conn_id: str = AZURE_CONN_ID) -> AzureContainer:
    """A fresh, uniquely named container."""
    name = f"statectl-{uuid.uuid4().hex[:12]}"
    container = AzureContainer(
        name, server.connection_string, conn_id, azure_conn_env(server.connection_string, conn_id)
    )
    with container.client() as cc:
        cc.create_container()
    return container


def plant_blobs(container: AzureContainer, blobs: Iterable[tuple[str, bytes]], *, replace: bool = False) -> None:
    """Upload many blobs concurrently (azure-storage-blob's async client); ``replace``: delete the others."""
    from azure.storage.blob.aio import ContainerClient

    wanted = dict(blobs)

    async def run() -> None:
        async with ContainerClient.from_connection_string(container.connection_string, container.container) as cc:
            semaphore = asyncio.Semaphore(64)

            async def one(make: Any) -> None:
                async with semaphore:
                    await make()

            if replace:
                stale = [b.name async for b in cc.list_blobs() if b.name not in wanted]
                await asyncio.gather(*(one(lambda n=n: cc.delete_blob(n)) for n in stale))
            await asyncio.gather(
                *(one(lambda n=n, d=d: cc.upload_blob(n, d, overwrite=True)) for n, d in wanted.items())
            )

    asyncio.run(run())
