"""Config validation messages, slash-command parsing, the app manifest, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.slack import commands
from recovery.redact import redact


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "aegis.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_follow_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AEGIS_CONFIG", raising=False)
    config = load_config()
    assert (config.objectives.rto_minutes, config.objectives.rpo_minutes, config.objectives.mttr_minutes) == (
        240, 15, 120)
    assert config.locale == "en" and config.slack.reminder_minutes == 30


@pytest.mark.parametrize(("data", "says"), [
    ({"roster": {"captain": ["U1"]}}, "unknown role"),
    ({"components": {"postgres": {"primary": {"dsn": "host=x password=hunter2"}}}}, "password_env"),
    ({"services": [{"name": "a", "depends_on": ["b"]}]}, "unknown service"),
    ({"hooks": {"fence_primary": {"command": ["x"], "webhook": "http://y"}}}, "exactly one"),
    ({"locale": "fr"}, "locale"),
    ({"slack": {"reminder_minutes": 0}}, "reminder_minutes"),
])
def test_invalid_config_names_the_key(tmp_path: Path, data: object, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert says in str(err.value)
    assert "hunter2" not in str(err.value)


def test_missing_explicit_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parse_commands() -> None:
    assert commands.parse("incident database_failure critical primary is down") == commands.Declare(
        "database_failure", "critical", "primary is down")
    assert commands.parse("incident") == commands.OpenDeclareForm()
    assert commands.parse("status inc-7") == commands.Status("INC-7")
    assert commands.parse("status") == commands.Status(None)
    assert commands.parse("") == commands.Help()
    assert commands.parse("list") == commands.ListOpen()
    assert commands.parse("incident meteor high x").problem == "unknown_scenario"
    assert commands.parse("incident ransomware severe x").problem == "unknown_severity"
    assert commands.parse("incident ransomware low").problem == "missing_summary"
    assert commands.parse("status; drop table").problem == "unknown_command"


def test_parse_backup_commands() -> None:
    assert commands.parse("backup run") == commands.BackupRun("full")
    assert commands.parse("backup run PostgreSQL") == commands.BackupRun("postgresql")
    assert commands.parse("backup list") == commands.BackupList()
    assert commands.parse("backup verify backup_20261129_020000") == commands.BackupVerify("backup_20261129_020000")
    assert commands.parse("backup verify backup_20261129_020000/neo4j-neo4j.jsonl.zst.aes") == commands.BackupVerify(
        "backup_20261129_020000/neo4j-neo4j.jsonl.zst.aes")
    assert commands.parse("backup run postgres").problem == "unknown_backup_kind"
    assert commands.parse("backup run neo4j now").problem == "unknown_backup_kind"
    assert commands.parse("backup verify").problem == "missing_backup_id"
    assert commands.parse("backup verify <@U1>").problem == "backup_not_found"
    assert commands.parse("backup").problem == "unknown_backup_command"
    assert commands.parse("backup restore x").problem == "unknown_backup_command"


def test_manifest_points_slack_at_the_bot() -> None:
    manifest = yaml.safe_load((Path(__file__).parent.parent / "bot" / "slack_manifest.yaml").read_text())
    assert manifest["features"]["slash_commands"][0]["command"] == "/aegis"
    assert manifest["features"]["slash_commands"][0]["url"].endswith("/slack/events")
    assert manifest["settings"]["interactivity"]["request_url"].endswith("/slack/events")
    assert {"commands", "chat:write", "channels:manage", "users:read"} <= set(manifest["oauth_config"]["scopes"]["bot"])


def test_redaction_masks_known_and_shaped_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LB_API_TOKEN", "tok-1234567890")
    text = ("dsn host=db password=s3cret user=x; url postgresql://app:pw12345@db/x; "
            "xoxb-123-456-abc and tok-1234567890")
    masked = redact(text)
    for secret in ("s3cret", "pw12345", "xoxb-123-456-abc", "tok-1234567890"):
        assert secret not in masked
