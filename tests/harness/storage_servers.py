"""Real storage servers for tests: moto's standalone S3 server (in-process thread) and Azurite (node process).

Import the fixtures into a test module (``from tests.harness.storage_servers import azurite, moto_s3, ...``).
``moto_s3`` and ``azurite`` live for the session; ``moto_s3_outage`` is a private S3 server per test that
the test may ``stop()`` to simulate an outage. Azurite is installed on first use by
``scripts/install-azurite`` into ``./.tools/azurite``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.pgcluster import free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published development account; not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never let a developer's real profile or config leak into tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for_port(port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"server for port {port} exited during startup")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class MotoS3:
    """A moto S3 server on 127.0.0.1; ``stop()`` makes the port refuse connections, like a dead endpoint."""

    server: Any
    port: int
    stopped: bool = False
    # a server its test stops (moto_s3_outage): its targets get ``retries: 0``, so a refused connection
    # fails at once, not after the SDK's backoff, which no outage test measures
    fails_fast: bool = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def target(self, bucket: str, name: str = "s3") -> dict[str, Any]:
        """A ``storage:`` entry of this server's ``bucket``."""
        fast = {"retries": 0} if self.fails_fast else {}
        return {"kind": "s3", "bucket": bucket, "endpoint_url": self.endpoint_url, "name": name, **fast}

    def create_bucket(self, name: str | None = None) -> str:
        bucket = name or unique("aegis-test")
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.stop()
        # shutdown() only ends the serve loop; close the socket so clients get "connection refused", not a hang.
        if self.server._server is not None:
            self.server._server.server_close()


def start_moto(port: int | None = None) -> MotoS3:
    """A moto S3 server; pass the ``port`` of a stopped one to bring that endpoint back."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port, 10)
    return MotoS3(server=server, port=port)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        yield AWS_ENV


@pytest.fixture(scope="session")
def moto_s3(aws_env: dict[str, str]) -> Iterator[MotoS3]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3_outage(aws_env: dict[str, str]) -> Iterator[MotoS3]:
    """A server of the test's own, so stopping it cannot break other tests."""
    server = start_moto()
    server.fails_fast = True
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Azurite:
    port: int
    process: subprocess.Popen[bytes]
    location: Path
    containers: list[str] = field(default_factory=list)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )

    def create_container(self, name: str | None = None) -> str:
        from azure.storage.blob import BlobServiceClient

        container = name or unique("aegis-test")
        BlobServiceClient.from_connection_string(self.connection_string).create_container(container)
        return container

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def ensure_azurite() -> Path:
    if not AZURITE_BIN.exists():
        proc = subprocess.run([str(REPO / "scripts" / "install-azurite")], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not AZURITE_BIN.exists():
            pytest.fail(f"could not install Azurite:\n{proc.stdout}\n{proc.stderr}")
    return AZURITE_BIN


def start_azurite(location: Path) -> Azurite:
    binary = ensure_azurite()
    port = free_port()
    log = (location / "azurite.out").open("wb")
    process = subprocess.Popen(
        [
            str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
            # The SDK speaks a newer REST version than this Azurite knows; the subset we use is unchanged.
            "--silent", "--skipApiVersionCheck", "--loose",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    server = Azurite(port=port, process=process, location=location)
    try:
        wait_for_port(port, 30, alive=lambda: process.poll() is None)
    except Exception:
        server.stop()
        output = (location / "azurite.out").read_text(errors="replace")
        pytest.fail(f"Azurite did not start: {output[-2000:]}")
    return server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        try:
            yield server
        finally:
            server.stop()
