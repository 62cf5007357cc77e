"""Keep the emulated workspace in SQLite, so a restart of ``aegis serve`` finds its channels again.

The bot's store outlives the process; without this the incidents it holds would point at channels
the restarted emulator never heard of. What is kept: users, channels (with members, topic,
purpose, archived flag), messages (with their edit history, thread replies included) and ephemeral
messages. Not kept: modals, trigger_ids and response_urls (Slack expires those within minutes
anyway), recorded calls and faults (test inspection only).

Each record is one row holding its JSON, written through on every change (one autocommit
statement, WAL journal), so a SIGKILL loses at most the change being written. The message
timestamp counter needs no row of its own: it resumes from the newest timestamp stored.

:class:`MemoryWorkspace` is the same interface doing nothing: the tests' emulators stay in memory.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slack_emulator.model import Channel, Ephemeral, Message, User

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (channel TEXT NOT NULL, ts TEXT NOT NULL, body TEXT NOT NULL,
                                     PRIMARY KEY (channel, ts));
CREATE TABLE IF NOT EXISTS ephemerals (user TEXT NOT NULL, message_ts TEXT NOT NULL, body TEXT NOT NULL,
                                       PRIMARY KEY (user, message_ts));
"""


@dataclass
class Snapshot:
    """What a stored workspace holds, in the order it was created."""

    users: list[User] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)   # each with its messages
    ephemerals: list[Ephemeral] = field(default_factory=list)

    def last_ts_us(self) -> int:
        """The newest timestamp handed out (messages, edits, ephemerals), in microseconds."""
        stamps = [m.ts for c in self.channels for m in c.messages]
        stamps += [e["ts"] for c in self.channels for m in c.messages for e in m.edits]
        stamps += [e.message_ts for e in self.ephemerals]
        return max((_micros(ts) for ts in stamps), default=0)


def _micros(ts: str) -> int:
    seconds, _, micros = ts.partition(".")
    return int(seconds) * 1_000_000 + int((micros or "0").ljust(6, "0")[:6])


class MemoryWorkspace:
    """No persistence: every write is a no-op and there is nothing to load."""

    path: str | None = None

    def load(self) -> Snapshot | None:
        return None

    def save_user(self, user: User) -> None:
        pass

    def save_channel(self, channel: Channel) -> None:
        pass

    def delete_channel(self, channel_id: str) -> None:
        pass

    def save_message(self, message: Message) -> None:
        pass

    def delete_message(self, channel_id: str, ts: str) -> None:
        pass

    def delete_messages(self, channel_id: str) -> None:
        pass

    def save_ephemeral(self, eph: Ephemeral) -> None:
        pass

    def delete_ephemeral(self, user: str, message_ts: str) -> None:
        pass

    def delete_all_ephemerals(self) -> None:
        pass

    def close(self) -> None:
        pass


class SqliteWorkspace(MemoryWorkspace):
    """The workspace in one SQLite file. Callers serialise access (EmulatorState holds its lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit (isolation_level=None): every write is its own transaction, durable once it returns
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO NOTHING",
                         (SCHEMA_VERSION,))
        found = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if found != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: emulator workspace schema {found}, expected {SCHEMA_VERSION}; "
                               "move the file away to start a fresh workspace")

    # ---- reading -------------------------------------------------------------------------------

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        # rowid order is creation order: the upserts below keep a row's rowid when they update it
        return [json.loads(body) for (body,) in self._db.execute(sql)]

    def load(self) -> Snapshot | None:
        users = [User(**u) for u in self._rows("SELECT body FROM users ORDER BY rowid")]
        channels = [Channel(**c) for c in self._rows("SELECT body FROM channels ORDER BY rowid")]
        if not users and not channels:
            return None
        by_id = {c.id: c for c in channels}
        for m in self._rows("SELECT body FROM messages ORDER BY rowid"):
            message = Message(**m)
            if message.channel in by_id:
                by_id[message.channel].messages.append(message)
        ephemerals = [Ephemeral(**e) for e in self._rows("SELECT body FROM ephemerals ORDER BY rowid")]
        return Snapshot(users, channels, ephemerals)

    # ---- writing -------------------------------------------------------------------------------

    def _upsert(self, table: str, keys: tuple[str, ...], values: tuple[str, ...], body: dict[str, Any]) -> None:
        columns = ", ".join((*keys, "body"))
        marks = ", ".join("?" * (len(keys) + 1))
        self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
                         f"ON CONFLICT({', '.join(keys)}) DO UPDATE SET body = excluded.body",
                         (*values, json.dumps(body)))

    def save_user(self, user: User) -> None:
        self._upsert("users", ("id",), (user.id,), asdict(user))

    def save_channel(self, channel: Channel) -> None:
        body = asdict(channel)
        body["messages"] = []   # messages have their own rows
        self._upsert("channels", ("id",), (channel.id,), body)

    def delete_channel(self, channel_id: str) -> None:
        self._db.execute("DELETE FROM channels WHERE id = ?", (channel_id,))
        self.delete_messages(channel_id)

    def save_message(self, message: Message) -> None:
        self._upsert("messages", ("channel", "ts"), (message.channel, message.ts), asdict(message))

    def delete_message(self, channel_id: str, ts: str) -> None:
        self._db.execute("DELETE FROM messages WHERE channel = ? AND ts = ?", (channel_id, ts))

    def delete_messages(self, channel_id: str) -> None:
        self._db.execute("DELETE FROM messages WHERE channel = ?", (channel_id,))

    def save_ephemeral(self, eph: Ephemeral) -> None:
        self._upsert("ephemerals", ("user", "message_ts"), (eph.user, eph.message_ts), asdict(eph))

    def delete_ephemeral(self, user: str, message_ts: str) -> None:
        self._db.execute("DELETE FROM ephemerals WHERE user = ? AND message_ts = ?", (user, message_ts))

    def delete_all_ephemerals(self) -> None:
        self._db.execute("DELETE FROM ephemerals")

    def close(self) -> None:
        self._db.close()


def open_workspace(path: str | Path | None) -> MemoryWorkspace:
    return SqliteWorkspace(path) if path else MemoryWorkspace()
