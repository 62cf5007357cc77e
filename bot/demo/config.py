"""The shipped demo config (``demo.yaml``, package data), filled in for one run of the embedded default.

``{data_dir}`` in the file's strings becomes the data directory (where the SQLite store lives); with
``--demo`` clusters, :class:`DemoPostgres` adds the primary and standby, the hooks that fence the old
primary and repoint the sample service, and the sample service's health check.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import overload

import yaml

from bot.config import Config, validate_config
from statemachines.json_types import JsonObject

DEMO_CONFIG = "demo.yaml"
SOURCE = "the demo config (bot/demo/demo.yaml)"
KEY_BYTES = 32


@dataclass(frozen=True)
class DemoPostgres:
    """What the ``--demo`` clusters add to the config."""

    primary_dsn: str
    standby_dsn: str
    health_url: str                 # the sample service's /healthz
    fence_command: list[str]        # the fence_primary hook: stops the old primary
    traffic_command: list[str]      # the update_traffic hook: points the sample service at the standby


def data_directory(store_url: str) -> Path:
    """Where the demo keeps its files: beside the SQLite store (``aegis.db``), else the working directory."""
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        return Path(os.path.abspath(database)).parent
    return Path.cwd()


def ensure_demo_key(path: Path) -> None:
    """Generate the demo's backup key once (base64 of 32 random bytes, mode 0600); an existing one is kept.

    ``O_EXCL`` with the mode set at creation: the key is never readable by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as key_file:
        key_file.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n")


@overload
def _fill(value: JsonObject, data_dir: Path) -> JsonObject: ...
@overload
def _fill(value: object, data_dir: Path) -> object: ...
def _fill(value: object, data_dir: Path) -> object:
    if isinstance(value, str):
        return value.replace("{data_dir}", str(data_dir))
    if isinstance(value, list):
        return [_fill(v, data_dir) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, data_dir) for k, v in value.items()}
    return value


def demo_data(data_dir: Path) -> JsonObject:
    text = resources.files("bot.demo").joinpath(DEMO_CONFIG).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict), "bot/demo/demo.yaml must be a mapping"
    return dict(_fill(data, data_dir))


def _with_postgres(data: JsonObject, pg: DemoPostgres) -> JsonObject:
    data["components"] = {"postgres": {
        "primary": {"dsn": pg.primary_dsn, "label": "demo primary"},
        "standby": {"dsn": pg.standby_dsn, "label": "demo standby"},
        "integrity_checks": [{"name": "demo orders", "sql": "SELECT count(*) FROM demo_orders", "min": 1}],
    }}
    data["hooks"] = {
        "fence_primary": {"command": pg.fence_command, "timeout_seconds": 60},
        "update_traffic": {"command": pg.traffic_command, "timeout_seconds": 30},
    }
    for service in data.get("services", []):
        if service.get("name") == "orders-api":
            service["health"] = {"http": pg.health_url, "timeout_seconds": 3}
    return data


def demo_config(data_dir: Path, postgres: DemoPostgres | None = None) -> Config:
    """The demo config for this data directory (the key generated if missing), checked like a file."""
    data = demo_data(data_dir)
    ensure_demo_key(Path(data["encryption"]["key_file"]))
    if postgres is not None:
        data = _with_postgres(data, postgres)
    return validate_config(data, SOURCE)
