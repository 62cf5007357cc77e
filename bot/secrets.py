"""Which environment variables hold secrets, according to the configuration — and masking them.

The rule: **a variable is secret because the configuration names it as holding a secret, not
because of what it is called.** Every value of these variables is registered with
:mod:`recovery.redact` at start (:func:`install_masking`), so :func:`recovery.redact.redact` masks it
in hook output, ledger rows, timeline text, Slack messages (the gateway redacts every outgoing
call) and log lines (the log formatter redacts every record):

- any key ending in ``_env`` anywhere in the file: ``components.postgres.*.password_env``,
  ``components.neo4j.password_env``, ``services[].health.postgres_dsn_env``,
  ``storage[].connection_string_env``, ``encryption.key_env``, … (a future ``*_env`` key is covered
  without a change here);
- every value of ``hooks.*.headers_env`` (header → variable) and every name in
  ``hooks.*.pass_env``; a header value of the form ``<scheme> <credential>`` (``Bearer abc…``) also
  masks the credential alone, since a webhook may echo it without the scheme;
- the variables used when the file leaves them implicit: ``AEGIS_BACKUP_KEY`` (the default
  ``key_env``), ``AZURE_STORAGE_CONNECTION_STRING`` (an Azure target's default),
  ``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` (S3 targets use the standard AWS chain), and the
  bot's own ``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``;
- the text of ``encryption.key_file`` when this process can read it (a hook that cats the key file
  is masked too; a raw 32-byte key never forms text, an unreadable file is simply skipped).

``hooks.*.env`` holds literal values the file itself shows, so they are not secrets; a value that
must stay secret goes through ``pass_env``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from bot.config import Config
from recovery.redact import register_secrets

log = logging.getLogger("aegis.secrets")

ALWAYS_SECRET = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "AEGIS_BACKUP_KEY")
_S3_CHAIN = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_AZURE_DEFAULT = "AZURE_STORAGE_CONNECTION_STRING"


def _env_names(node: object, key: str = "") -> Iterator[str]:
    """Names under ``*_env`` keys of a dumped config: a string, a list of names, or a mapping's values."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _env_names(child, str(child_key))
        return
    if isinstance(node, list):
        for item in node:
            # a list item inherits its key only when it is a name (pass_env: [A, B])
            yield from _env_names(item, key if isinstance(item, str) else "")
        return
    if isinstance(node, str) and key.endswith("_env"):
        yield node


def _mapping_values_env(node: object) -> Iterator[str]:
    """``headers_env: {Authorization: LB_TOKEN}``: the variable names are the mapping's values."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            if child_key.endswith("_env") and isinstance(child, dict):
                yield from (v for v in child.values() if isinstance(v, str))
            else:
                yield from _mapping_values_env(child)
    elif isinstance(node, list):
        for item in node:
            yield from _mapping_values_env(item)


def _storage_kinds(config: Config) -> set[str]:
    kinds = set()
    for entry in config.storage or []:
        kind = entry.get("kind") if isinstance(entry, dict) else getattr(entry, "kind", None)
        kinds.add(str(getattr(kind, "value", kind)))
    return kinds


def declared_secret_names(config: Config) -> set[str]:
    """The environment variables whose values are secret, by what ``config`` says about them."""
    dumped = config.model_dump(mode="json")
    names = set(_env_names(dumped)) | set(_mapping_values_env(dumped)) | set(ALWAYS_SECRET)
    kinds = _storage_kinds(config)
    if "s3" in kinds:
        names.update(_S3_CHAIN)
    if "azure" in kinds:
        names.add(_AZURE_DEFAULT)
    return {n for n in names if n}


def _key_file(config: Config) -> str | None:
    enc = config.encryption
    value = enc.get("key_file") if isinstance(enc, dict) else getattr(enc, "key_file", None)
    return str(value) if value else None


def _key_file_text(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes().decode("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None   # unreadable here (the file may belong to the postgres user) or raw bytes


def _credential_parts(value: str) -> list[str]:
    """``Bearer abc`` → also ``abc``: a webhook may echo the credential without its scheme."""
    scheme, _, credential = value.strip().partition(" ")
    return [credential.strip()] if scheme and credential.strip() else []


def declared_secret_values(config: Config, environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    headers = set(_mapping_values_env(config.model_dump(mode="json")))
    values: list[str] = []
    for name in declared_secret_names(config):
        value = env.get(name)
        if value:
            values += [value, *(_credential_parts(value) if name in headers else [])]
    key_text = _key_file_text(_key_file(config))
    if key_text:
        values.append(key_text)
    return values


def install_masking(config: Config) -> int:
    """Register the current values of every declared secret; returns how many new values are masked."""
    added = register_secrets(declared_secret_values(config))
    log.info("masking %d declared secret value(s) from the configuration", added)
    return added
