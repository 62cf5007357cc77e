"""``aegis backup run|list|verify`` as a process against PostgreSQL 15, moto S3, Azurite and a local dir."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.pgcluster import PgSingle
from tests.harness.storage_servers import Azurite, MotoS3, aws_env, azurite, moto_s3, moto_s3_outage  # noqa: F401

KEY = base64.b64encode(bytes(range(32))).decode()


def aegis(workdir: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AEGIS_CONFIG": str(workdir / "aegis.yaml"),
           "AEGIS_DATABASE_URL": f"sqlite:///{workdir}/aegis.db"}
    env.pop("AEGIS_BACKUP_KEY", None)
    if key is not None:
        env["AEGIS_BACKUP_KEY"] = key
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=300)


def configure(workdir: Path, pg: PgSingle, s3: MotoS3, az: Azurite | None) -> dict[str, Any]:
    storage: list[dict[str, Any]] = [{"kind": "local", "path": str(workdir / "staging"), "name": "local"},
                                     s3.target(s3.create_bucket())]
    if az is not None:
        storage.append({"kind": "azure", "container": az.create_container(), "name": "azure",
                        "connection_string_env": "AZURE_STORAGE_CONNECTION_STRING"})
    config = {"components": {"postgres": {"primary": {"dsn": pg.primary.dsn()}}}, "storage": storage}
    (workdir / "aegis.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture
def database(pg_single: PgSingle) -> PgSingle:
    pg_single.primary.sql("CREATE TABLE t (id int primary key, v text)")
    pg_single.primary.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    return pg_single


def test_backup_to_three_targets_verify_and_detect_a_flipped_byte(
    tmp_path: Path, database: PgSingle, moto_s3: MotoS3, azurite: Azurite,  # noqa: F811
) -> None:
    config = configure(tmp_path, database, moto_s3, azurite)
    first = aegis(tmp_path, "backup", "run", "postgresql")
    assert first.returncode == 0, first.stdout + first.stderr
    second = aegis(tmp_path, "backup", "run", "postgresql", "--quiet")
    assert second.returncode == 0, second.stdout + second.stderr
    run_id = second.stdout.split()[0]
    assert run_id.startswith("backup_") and len(run_id) >= len("backup_YYYYMMDD_HHMMSS")
    listing = aegis(tmp_path, "backup", "list").stdout
    assert listing.count("pg_full") == 2 and "s3:ok" in listing and "azure:ok" in listing
    assert "local:ok (removed)" in listing                  # two remote copies → staging copy removed (B6)
    assert not list((tmp_path / "staging").rglob("*.aes"))
    ok = aegis(tmp_path, "backup", "verify", run_id)
    assert ok.returncode == 0 and "re-read: s3" in ok.stdout, ok.stdout + ok.stderr

    # flip one byte in the middle of the S3 copy
    client = moto_s3.client()
    bucket = config["storage"][1]["bucket"]
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if run_id in o["Key"])
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    bad = aegis(tmp_path, "backup", "verify", run_id)
    assert bad.returncode == 1
    assert run_id in bad.stdout and "s3:" in bad.stdout and "chunk" in bad.stdout, bad.stdout
    assert "previous good backup: backup_" in bad.stdout


def test_one_remote_down_succeeds_on_the_others_all_down_keeps_local_and_fails(
    tmp_path: Path, database: PgSingle, moto_s3_outage: MotoS3, azurite: Azurite,  # noqa: F811
) -> None:
    config = configure(tmp_path, database, moto_s3_outage, azurite)
    moto_s3_outage.stop()
    one_down = aegis(tmp_path, "backup", "run", "postgresql", "--quiet")
    assert one_down.returncode == 0, one_down.stdout + one_down.stderr
    assert "s3:FAILED" in one_down.stdout and "azure:ok" in one_down.stdout
    assert list((tmp_path / "staging").rglob("*.aes")), "the local copy must stay while only one remote holds it"

    config["storage"] = config["storage"][:2]          # local + the dead S3: no remote left
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump(config))
    all_down = aegis(tmp_path, "backup", "run", "postgresql", "--quiet")
    assert all_down.returncode == 1
    assert "every remote target failed" in all_down.stdout and "local:ok" in all_down.stdout
    listing = aegis(tmp_path, "backup", "list").stdout.splitlines()
    assert "failed" in listing[0] and " ok " in listing[1]   # the previous good backup is still listed


def test_missing_or_wrong_key_fails_before_anything_is_written(
    tmp_path: Path, database: PgSingle, moto_s3: MotoS3,  # noqa: F811
) -> None:
    configure(tmp_path, database, moto_s3, None)
    missing = aegis(tmp_path, "backup", "run", "postgresql", key=None)
    assert missing.returncode == 2 and "AEGIS_BACKUP_KEY" in missing.stderr and "Traceback" not in missing.stderr
    short = aegis(tmp_path, "backup", "run", "postgresql", key="dG9vIHNob3J0")
    assert short.returncode == 2 and "Traceback" not in short.stderr
    assert not (tmp_path / "staging").exists() or not list((tmp_path / "staging").rglob("*"))
