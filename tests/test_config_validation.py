"""Configuration that says what is wrong (issue 7): typed sections, paths, suggestions, one line each.

The table of broken files runs one (or more) per section through the real ``aegis config check
--config FILE`` as a subprocess (all at once, in a module fixture, to keep the module at seconds)
and checks the exit code (2), that each problem is one line naming the file and the key's path, the
suggestion, and no traceback; the rest of the table goes through ``load_config`` in-process, with
the same checks on :attr:`ConfigError.problems` (what the CLI prints, one per line).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from bot.backup_wiring import key_from, sources_from, targets_from
from bot.config import (
    HOOK_NAMES,
    TIERS,
    AzureStorage,
    Config,
    ConfigError,
    LocalStorage,
    PostgresNode,
    S3Storage,
    closest,
    load_config,
)
from recovery.backup.storage.base import DEFAULT_CONCURRENCY
from recovery.backup.stream.crypto import BackupKey
from recovery.planner import Facts, propose

REPO = Path(__file__).resolve().parent.parent
KEY_A = "11" * 32
KEY_B = "22" * 32
SECRET = "s3cr3t-Pa55"   # must never be echoed by a refusal


CLI, LIB = "cli", "lib"   # through `aegis config check` as a subprocess, or load_config in-process


@dataclass(frozen=True)
class Broken:
    via: str
    name: str
    content: str | bytes | None       # None: the path is a directory
    says: list[str]                   # fragments of the one expected problem line
    problems: int = 1


def _storage(*entries: str) -> str:
    return "storage:\n" + "".join(f"  - {e}\n" for e in entries)


BROKEN = [
    Broken(CLI, "storage kind s4", _storage("{kind: s4, bukket: x}"),
           ["`storage[0].kind`: 's4' is not one of local, s3, azure"]),
    Broken(CLI, "storage bukket", _storage("{kind: local, path: /tmp/x}", "{kind: s3, bucket: b, bukket: x}"),
           ["`storage[1].bukket`: unknown key; did you mean `bucket`?"]),
    Broken(LIB, "storage missing bucket", _storage("{kind: s3, region: eu-west-1}"),
           ["`storage[0].bucket`: required key is missing"]),
    Broken(LIB, "storage without kind", _storage("{path: /tmp/x}"),
           ["`storage[0].kind`: required key is missing; give one of local, s3, azure"]),
    Broken(LIB, "storage azure typo", _storage("{kind: azure, container: c, conection_string_env: AZ}"),
           ["`storage[0].conection_string_env`: unknown key; did you mean `connection_string_env`?"]),
    Broken(LIB, "storage S3 part below 5 MiB", _storage("{kind: s3, bucket: b, part_size: 1024}"),
           ["`storage[0].part_size`: Input should be greater than or equal to 5242880"]),
    Broken(LIB, "storage names clash", _storage("{kind: local, path: /a, name: x}", "{kind: local, path: /b, name: x}"),
           ["storage[1]: the name 'x' is used by an earlier target"]),
    Broken(CLI, "encryption key_fiel", "encryption: {key_fiel: /etc/aegis/backup.key}\n",
           ["`encryption.key_fiel`: unknown key; did you mean `key_file`?"]),
    Broken(CLI, "encryption both", "encryption: {key_env: AEGIS_BACKUP_KEY, key_file: /etc/aegis/backup.key}\n",
           ["`encryption`: give exactly one of key_env (a variable holding the key) or key_file"]),
    Broken(LIB, "encryption neither", "encryption: {}\n", ["`encryption`: give exactly one of key_env"]),
    Broken(CLI, "neo4j pasword_env", "components:\n  neo4j: {uri: 'bolt://127.0.0.1:7687', pasword_env: NEO4J_PW}\n",
           ["`components.neo4j.pasword_env`: unknown key; did you mean `password_env`?"]),
    Broken(LIB, "neo4j password in URI", f"components:\n  neo4j: {{uri: 'bolt://neo4j:{SECRET}@db:7687'}}\n",
           ["`components.neo4j.uri`: do not put a password in the URL; name an environment variable in "
            "password_env"]),
    Broken(CLI, "milvus unknown key", "components:\n  milvus: {uri: /var/lib/milvus.db, url: http://x}\n",
           ["`components.milvus.url`: unknown key; did you mean `uri`?"]),
    Broken(CLI, "backups schedule typo", "backups:\n  schedules: {postgres_ful: '0 2 * * sun'}\n",
           ["`backups.schedules.postgres_ful`: unknown key; did you mean `postgres_full`?"]),
    Broken(LIB, "backups bad crontab", "backups:\n  schedules: {neo4j: 'every night'}\n",
           ["`backups.schedules.neo4j`: not a crontab expression"]),
    Broken(CLI, "hook fence_primery", "hooks:\n  fence_primery: {command: [./fence.sh]}\n",
           ["`hooks.fence_primery`: unknown hook `fence_primery`; did you mean `fence_primary`?"]),
    Broken(CLI, "hook command and webhook", "hooks:\n  update_traffic: {command: [x], webhook: 'https://lb/x'}\n",
           ["`hooks.update_traffic`: give exactly one of command or webhook"]),
    Broken(LIB, "hook key typo", "hooks:\n  fence_primary: {command: [x], pass_envs: [DB_PASS]}\n",
           ["`hooks.fence_primary.pass_envs`: unknown key; did you mean `pass_env`?"]),
    Broken(LIB, "hook env shadows context", "hooks:\n  fence_primary: {command: [x], env: {AEGIS_INCIDENT: INC-1}}\n",
           ["`hooks.fence_primary.env`: AEGIS_INCIDENT: AEGIS_* variables are set by Aegis"]),
    Broken(LIB, "hook pass_env bad name", "hooks:\n  fence_primary: {command: [x], pass_env: [db-pass]}\n",
           ["`hooks.fence_primary.pass_env[0]`: `db-pass` is not an environment variable name"]),
    Broken(LIB, "hook env bad name", "hooks:\n  fence_primary: {command: [x], env: {region: eu}}\n",
           ["`hooks.fence_primary.env.region`: `region` is not an environment variable name"]),
    Broken(LIB, "hook pass_env context", "hooks:\n  fence_primary: {command: [x], pass_env: [AEGIS_STEP]}\n",
           ["`hooks.fence_primary.pass_env`: AEGIS_STEP: set by Aegis as the hook's context"]),
    Broken(LIB, "hook webhook password", f"hooks:\n  update_traffic: {{webhook: 'https://u:{SECRET}@lb/x'}}\n",
           ["`hooks.update_traffic.webhook`: do not put a password in the URL; send credentials as a header"]),
    Broken(CLI, "scenario databse_failure", "slack:\n  scenario_roles: {databse_failure: [database_lead]}\n",
           ["`slack.scenario_roles.databse_failure`: unknown scenario `databse_failure`; "
            "did you mean `database_failure`?"]),
    Broken(CLI, "role dba in roster", "roster: {dba: [U0DB]}\n",
           ["`roster.dba`: unknown role `dba`; did you mean `database_lead`?"]),
    Broken(LIB, "role dba in scenario_roles", "slack:\n  scenario_roles: {ransomware: [security_lead, dba]}\n",
           ["`slack.scenario_roles.ransomware[1]`: unknown role `dba`; did you mean `database_lead`?"]),
    Broken(CLI, "URL DSN with password", f"components:\n  postgres: {{primary: {{dsn: 'postgresql://app:{SECRET}@db/app'}}}}\n",
           ["`components.postgres.primary.dsn`: do not put a password in the DSN; name an environment variable "
            "in password_env"]),
    Broken(LIB, "URL DSN with password parameter",
           f"components:\n  postgres:\n    primary: {{dsn: 'host=a'}}\n"
           f"    standby: {{dsn: 'postgresql://app@db/app?password={SECRET}'}}\n",
           ["`components.postgres.standby.dsn`: do not put a password in the DSN"]),
    Broken(LIB, "key=value DSN with password",
           f"components:\n  postgres: {{primary: {{dsn: \"host=db password='{SECRET}'\"}}}}\n",
           ["`components.postgres.primary.dsn`: do not put a password in the DSN"]),
    Broken(LIB, "integrity check with expect and min",
           "components:\n  postgres:\n    primary: {dsn: 'host=/tmp'}\n"
           "    integrity_checks: [{name: rows, sql: 'SELECT 1', expect: '1', min: 1}]\n",
           ["`components.postgres.integrity_checks[0]`", "give at most one of expect or min"]),
    Broken(LIB, "integrity check key typo",
           "components:\n  postgres:\n    primary: {dsn: 'host=/tmp'}\n"
           "    integrity_checks: [{name: rows, sql: 'SELECT 1', minimum: 1}]\n",
           ["`components.postgres.integrity_checks[0].minimum`: unknown key; did you mean `min`?"]),
    Broken(CLI, "tier 7", "services:\n  - {name: api, tier: 7}\n",
           ["`services[0].tier`: tier 7 does not exist; tiers are 1, 2 and 3"]),
    Broken(LIB, "depends_on typo",
           "services:\n  - {name: user-auth, tier: 1}\n  - {name: api, depends_on: [user-aut]}\n",
           ["depends on unknown service(s) ['user-aut']", "did you mean `user-auth`?"]),
    Broken(CLI, "depends_on cycle",
           "services:\n  - {name: db, tier: 1}\n  - {name: auth, depends_on: [db, search]}\n"
           "  - {name: search, depends_on: [auth]}\n",
           ["services depend on each other in a cycle: auth → search → auth", "remove one of these depends_on"]),
    Broken(LIB, "depends_on itself", "services:\n  - {name: api, depends_on: [api]}\n",
           ["in a cycle: api → api"]),
    Broken(LIB, "service start hook typo", "services:\n  - {name: api, start: {comand: [./start.sh]}}\n",
           ["`services[0].start.comand`: unknown key; did you mean `command`?"]),
    Broken(CLI, "timezone Mars/Olympus", "timezone: Mars/Olympus\n",
           ["`timezone`: unknown time zone 'Mars/Olympus'; use an IANA name such as UTC or Asia/Seoul"]),
    Broken(LIB, "backups timezone", "backups: {timezone: Asia/Seol}\n", ["`backups.timezone`: unknown time zone"]),
    Broken(LIB, "top-level typo", "objectivs: {rto_minutes: 60}\n",
           ["`objectivs`: unknown key; did you mean `objectives`?"]),
    Broken(CLI, "two problems, two lines", "roster: {dba: [U1]}\ntimezone: Nowhere/City\n",
           ["`roster.dba`", "`timezone`"], problems=2),
    Broken(CLI, "non-UTF-8 file", b"locale: en\nslack: {ops_channel: \"\xff\xfe\"}\n",
           ["not UTF-8 text (invalid byte at offset 33); save it as UTF-8"]),
    Broken(CLI, "directory", None, ["is a directory; give the path of the YAML file"]),
    Broken(LIB, "invalid YAML", "storage: [\n  {kind: local\n", ["not valid YAML: ", "(line "]),
    Broken(LIB, "not a mapping", "- locale: en\n", ["the top level must be a mapping of keys", "not a list"]),
    Broken(LIB, "duplicate key", "locale: en\nroster: {}\nlocale: ko\n",
           ["not valid YAML: the key 'locale' is given twice"]),
    Broken(CLI, "newline in a key", "\"stor\\nage\": []\n", ["`stor\\nage`: unknown key; did you mean `storage`?"]),
]


def _aegis(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AEGIS_CONFIG", "AEGIS_LOCALE")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60)


def _write(path: Path, content: str | bytes | None) -> Path:
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """The CLI cases of the table through `aegis config check --config FILE`, run concurrently."""
    root = tmp_path_factory.mktemp("broken")
    files = {case.name: _write(root / f"case{i}.yaml", case.content)
             for i, case in enumerate(BROKEN) if case.via == CLI}
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(files, pool.map(lambda f: _aegis("config", "check", "--config", str(f), cwd=root),
                                        files.values()), strict=True))
    return {name: (files[name], runs[name]) for name in files}


def _assert_lines(file: Path, lines: list[str], says: list[str], problems: int) -> None:
    assert len(lines) == problems, lines
    for line in lines:                          # one line per problem, each naming the file
        assert line.removeprefix("aegis: ").startswith(f"{file}: "), line
    for fragment in says:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert not any(SECRET in line for line in lines)


def _assert_refused(file: Path, run: subprocess.CompletedProcess[str], says: list[str], problems: int) -> None:
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "config OK" not in run.stdout
    _assert_lines(file, run.stderr.splitlines(), says, problems)


CLI_CASES = [c for c in BROKEN if c.via == CLI]
LIB_CASES = [c for c in BROKEN if c.via == LIB]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_config_check_refuses_a_broken_file_with_one_line_per_problem(
        case: Broken, checked: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]) -> None:
    file, run = checked[case.name]
    _assert_refused(file, run, case.says, case.problems)


@pytest.mark.parametrize("case", LIB_CASES, ids=[c.name for c in LIB_CASES])
def test_load_config_refuses_a_broken_file_with_one_line_per_problem(case: Broken, tmp_path: Path) -> None:
    file = _write(tmp_path / "aegis.yaml", case.content)
    with pytest.raises(ConfigError) as refused:
        load_config(file)
    assert str(refused.value).splitlines() == refused.value.problems
    _assert_lines(file, refused.value.problems, case.says, case.problems)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    # /proc/self/mem exists but reading it from offset 0 fails (EIO), even for root
    run = _aegis("config", "check", "--config", "/proc/self/mem", cwd=tmp_path)
    _assert_refused(Path("/proc/self/mem"), run, ["cannot be read"], 1)
    if os.geteuid() != 0:   # root reads a 0000 file anyway
        locked = _write(tmp_path / "locked.yaml", "locale: en\n")
        locked.chmod(0)
        run = _aegis("config", "check", "--config", str(locked), cwd=tmp_path)
        _assert_refused(locked, run, ["cannot be read (permission denied)"], 1)


def test_serve_refuses_an_invalid_file_before_starting(tmp_path: Path) -> None:
    broken = _write(tmp_path / "aegis.yaml", "hooks:\n  fence_primery: {command: [x]}\n")
    for args in (("serve", "--config", str(broken), "--port", "0"), ("--config", str(broken), "serve", "--port", "0")):
        run = _aegis(*args, cwd=tmp_path)
        _assert_refused(broken, run, ["did you mean `fence_primary`?"], 1)
        assert "listening" not in run.stdout


# --- what stays valid --------------------------------------------------------------------------


FULL = """
locale: ko
timezone: Asia/Seoul
objectives: {rto_minutes: 240, rpo_minutes: 15, mttr_minutes: 120, availability_percent: 99.9}
slack:
  scenario_roles: {database_failure: [incident_commander, database_lead]}
roster: {incident_commander: [U0IC], database_lead: [U0DB]}
services:
  - {name: user-authentication, tier: 1, health: {http: "http://127.0.0.1:8081/health"}}
  - {name: reports, tier: 3, depends_on: [user-authentication], health: {postgres_dsn_env: REPORTS_DSN}}
components:
  postgres:
    primary: {dsn: "postgresql://app@db:5432/app?sslmode=require", password_env: PG_PASSWORD}
    standby: {dsn: "host=/run/pg port=5433 user=postgres", password_env: PG_PASSWORD, label: pg-b}
  neo4j: {uri: "neo4j+s://graph.internal:7687", user: backup, password_env: NEO4J_PASSWORD, database: graph}
  milvus: {uri: "http://milvus.internal:19530"}
hooks:
  fence_primary:
    command: ["./ops/fence.sh"]
    env: {REGION: eu-west-1, DRY_RUN: "0"}
    pass_env: [FENCE_TOKEN]
    done_check: ["./ops/is-fenced.sh"]
  update_traffic: {webhook: "https://lb.internal/failover", headers_env: {Authorization: LB_TOKEN}}
storage:
  - {kind: local, path: /var/lib/aegis/staging}
  - {kind: s3, bucket: aegis, region: ap-northeast-2, endpoint_url: "http://127.0.0.1:9000", prefix: prod/,
     part_size: 8388608, concurrency: 8, retries: 5}
  - {kind: azure, container: aegis, connection_string_env: AZ_CONN, block_size: 4194304, name: blob}
encryption: {key_file: /etc/aegis/backup.key}
backups:
  schedules: {postgres_full: "0 2 * * sun", neo4j: null, wal_switch_minutes: 15}
  retention: {postgres_full_days: 28}
engine: {lease_seconds: 30, approval_expiry_minutes: 60}
"""


def test_every_section_is_typed(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path / "aegis.yaml", FULL))
    local, s3, azure = config.storage
    assert isinstance(local, LocalStorage) and isinstance(s3, S3Storage) and isinstance(azure, AzureStorage)
    assert [t.name for t in config.storage] == ["local", "s31", "blob"]     # defaults as before
    assert s3.part_size == 8 * 2**20 and azure.connection_string_env == "AZ_CONN"
    assert config.encryption.key_file == "/etc/aegis/backup.key" and config.encryption.key_env is None
    assert config.components.neo4j is not None and config.components.neo4j.database == "graph"
    assert config.components.milvus is not None and config.components.milvus.uri.startswith("http://")
    hook = config.hooks["fence_primary"]
    assert hook.env == {"REGION": "eu-west-1", "DRY_RUN": "0"} and hook.pass_env == ["FENCE_TOKEN"]
    # the top-level zone is the backups' zone unless they name their own
    assert config.timezone == config.backups.timezone == "Asia/Seoul"
    assert load_config(_write(tmp_path / "b.yaml", "timezone: Asia/Seoul\nbackups: {timezone: UTC}\n")
                       ).backups.timezone == "UTC"
    assert load_config(_write(tmp_path / "c.yaml", "")).timezone == "UTC"
    run = _aegis("config", "check", "--config", str(tmp_path / "aegis.yaml"), cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("config OK"), run.stderr


def test_storage_models_build_the_same_targets(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path / "aegis.yaml", FULL))
    local, s3, azure = targets_from(config)
    assert (local.kind, local.name, str(local.root)) == ("local", "local", "/var/lib/aegis/staging")  # type: ignore[attr-defined]
    assert (s3.name, s3.bucket, s3.prefix, s3.concurrency, s3.retries) == ("s31", "aegis", "prod/", 8, 5)  # type: ignore[attr-defined]
    # keys the file leaves out keep storage.py's defaults
    assert (azure.name, azure.connection_string_env, azure.block_size, azure.concurrency) == (  # type: ignore[attr-defined]
        "blob", "AZ_CONN", 4 * 2**20, DEFAULT_CONCURRENCY)
    sources = sources_from(config)
    assert sources.neo4j == {"uri": "neo4j+s://graph.internal:7687", "user": "backup", "password": None,
                             "database": "graph"}
    assert sources.milvus_uri == "http://milvus.internal:19530"


def test_the_key_comes_from_exactly_the_configured_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY_A)
    monkeypatch.setenv("OTHER_KEY", KEY_B)
    key_file = tmp_path / "backup.key"
    key_file.write_text(KEY_B)
    key_file.chmod(0o600)
    expected_b = BackupKey.from_bytes(bytes.fromhex(KEY_B)).key_id
    by_file = load_config(_write(tmp_path / "f.yaml", f"encryption: {{key_file: {key_file}}}\n"))
    assert key_from(by_file).key_id == expected_b            # not $AEGIS_BACKUP_KEY
    by_env = load_config(_write(tmp_path / "e.yaml", "encryption: {key_env: OTHER_KEY}\n"))
    assert key_from(by_env).key_id == expected_b
    default = load_config(_write(tmp_path / "d.yaml", "locale: en\n"))
    assert key_from(default).key_id == BackupKey.from_bytes(bytes.fromhex(KEY_A)).key_id
    # a misspelled key_file is an error, not the environment's key
    with pytest.raises(ConfigError, match=r"`encryption.key_fiel`: unknown key; did you mean `key_file`\?"):
        load_config(_write(tmp_path / "typo.yaml", f"encryption: {{key_fiel: {key_file}}}\n"))


def test_a_url_dsn_gets_its_password_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "p w'\\@:/x"
    monkeypatch.setenv("PG_PASSWORD", password)
    for dsn in ("postgresql://app@db:5432/app", "host=db port=5432 user=app dbname=app"):
        parts = conninfo_to_dict(PostgresNode(dsn=dsn, password_env="PG_PASSWORD").full_dsn())
        assert (parts["password"], parts["user"], parts["host"], parts["dbname"]) == (password, "app", "db", "app")
    assert PostgresNode(dsn="host=db").full_dsn() == "host=db"
    # a host that merely contains the word is not a password
    assert PostgresNode(dsn="host=passwordless.internal").dsn == "host=passwordless.internal"


def test_tiers_match_the_readme() -> None:
    assert TIERS == (1, 2, 3)
    for tier in TIERS:
        Config.model_validate({"services": [{"name": "a", "tier": tier}]})
    for tier in (0, 4):
        with pytest.raises(ValueError, match="tiers are 1, 2 and 3"):
            Config.model_validate({"services": [{"name": "a", "tier": tier}]})
    config_section = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert "tier 1, 2 or 3" in config_section and "T1-T4" not in config_section


def test_hook_names_are_the_planners() -> None:
    used = set()
    for scenario in ("database_failure", "datacenter_outage", "ransomware"):
        for standby in (False, True):
            plan = propose(Facts(scenario=scenario, has_postgres_primary=True, has_postgres_standby=standby,
                                 hooks=frozenset(HOOK_NAMES)))
            used |= {s.params["hook"] for s in plan.steps if s.action == "hook"}
    assert used == set(HOOK_NAMES)


def test_closest_names() -> None:
    roles = ("incident_commander", "database_lead", "security_lead", "infrastructure_lead")
    assert closest("dba", roles) == "database_lead"
    assert closest("infra", roles) == "infrastructure_lead"
    assert closest("zzz", roles) is None


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_readme_examples_still_validate(tmp_path: Path) -> None:
    blocks = _yaml_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    merged: dict[str, Any] = {}
    for block in blocks:
        data = yaml.safe_load(block)
        if not isinstance(data, dict) or not ({"storage", "locale", "components"} & set(data)):
            continue   # not a config excerpt
        Config.model_validate(data)
        merged.update(data)
    Config.model_validate(merged)


def test_a_locale_from_the_environment_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_LOCALE", "fr")
    file = _write(tmp_path / "aegis.yaml", "locale: en\n")
    with pytest.raises(ConfigError) as refused:
        load_config(file)
    assert refused.value.problems == [
        f"{file}: `locale`: Input should be 'en' or 'ko' (the value comes from AEGIS_LOCALE)"]
