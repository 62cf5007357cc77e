"""The fast path of ``aegis wal push %p``: hand the segment to a running ``aegis wal archiver``.

``archive_command`` runs once per segment, so whatever it imports it pays per segment. This module
uses the standard library only (socket, os, json, fcntl) — importing it must load no database,
storage, compression or crypto library (tests/test_wal_archiver.py checks ``sys.modules``) — so
the caller learns whether the archiver answers before anything heavy is imported.

The protocol is one JSON line each way over a Unix stream socket: the request names the segment
(absolute path, name, size), the answer says whether it is durably archived. ``hand_over`` returns
None when there is no archiver to ask (no socket, connection refused, a socket someone else owns)
or when the archiver went away before answering (killed mid-push): the caller then pushes the
segment itself, exactly as without an archiver. Either way a segment is acknowledged to PostgreSQL
only on an explicit "durable" answer or a successful push of its own (B6).

``segment_lock`` serialises pushes of one segment between processes (the archiver's workers, its
look-ahead, a fallback push by ``archive_command``): two concurrent pushes of one name would each
write a catalog row and the later upload would replace the ciphertext the earlier row describes.

``fetch_over`` asks the archiver for a segment (``restore_command``): it decrypts it with the key it
already holds, checks it against the catalog's sha256 and writes it to ``%p`` (temp file + rename);
the answer is restored, absent or error — the last one also for a tampered copy.

The fastest ``archive_command`` / ``restore_command`` is ``client.py`` run as a script (the standard
library's os, sys, socket and struct only, no ``site``); ``command_lines`` gives both lines, which
``aegis wal archiver`` and ``aegis config check`` print. ``hand_over`` and ``fetch_over`` are thin
wrappers around its functions, so there is one client.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recovery.backup.wal import client

# The default socket: beside the segments, so it needs no setting and is private to the server's user
# (pg_wal is inside the 0700 data directory; pg_basebackup and pg_rewind copy only WAL-named files from it).
DEFAULT_SOCKET_NAME = client.DEFAULT_SOCKET_NAME
PROTOCOL = client.PROTOCOL
_MAX_LINE = client.MAX_LINE
_SUN_PATH_MAX = 107   # sockaddr_un.sun_path is 108 bytes including the terminating NUL


class HandoffError(Exception):
    """The archiver cannot be used as configured (e.g. a socket path too long to bind)."""


FETCH_RESTORED, FETCH_ABSENT, FETCH_ERROR, PUSH_FAILED = (client.FETCH_RESTORED, client.FETCH_ABSENT,
                                                        client.FETCH_ERROR, client.PUSH_FAILED)


@dataclass(frozen=True)
class Answer:
    """The archiver's verdict on one segment: ``durable`` means on the targets, with its catalog row."""

    durable: bool
    message: str


def default_socket(wal_dir: Path) -> Path:
    """``<data dir>/pg_wal/aegis-archiver.sock`` for the segments in ``wal_dir``."""
    return wal_dir / DEFAULT_SOCKET_NAME


def wal_dir_of(segment_path: Path) -> Path:
    """The pg_wal directory of ``%p`` (relative to the data directory, PostgreSQL's cwd): not resolved,
    so a symlinked pg_wal still names the data directory's own entry."""
    return Path(os.path.abspath(segment_path)).parent


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise HandoffError(f"the archiver socket path {path} is longer than {_SUN_PATH_MAX} bytes; "
                           "set backups.archiver.socket to a shorter path")


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def read_line(conn: socket.socket) -> bytes | None:
    """One ``\\n``-terminated line, or None when the peer closed first (it died or gave up)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_LINE:
            raise ValueError("protocol line too long")
    return bytes(data)


def hand_over(socket_path: Path, segment_path: Path, timeout: float = 600.0) -> Answer | None:
    """Ask the archiver at ``socket_path`` to archive ``segment_path``; None: no archiver answered.

    An archiver that accepted the segment but does not answer within ``timeout`` seconds is a
    failure (not durable), not a reason to push a second copy at once: PostgreSQL retries.
    """
    try:
        answer = client.ask(os.fspath(socket_path), client.push_request(os.fspath(segment_path)), timeout)
    except client.AnswerTimeout as exc:
        return Answer(False, str(exc))
    except client.NoAnswer:
        return None
    return Answer(client.durable(answer), client.message_of(answer))


@dataclass(frozen=True)
class FetchAnswer:
    """The archiver's answer to a fetch: ``exit_code`` is restore_command's (0 restored, 1 absent, 255 error)."""

    exit_code: int
    message: str


def fetch_over(socket_path: Path, name: str, dest: Path, timeout: float = 600.0) -> FetchAnswer | None:
    """Ask the archiver to restore ``name`` (``%f``) to ``dest`` (``%p``); None: no archiver answered."""
    try:
        answer = client.ask(os.fspath(socket_path), client.fetch_request(name, os.fspath(dest)), timeout)
    except client.AnswerTimeout as exc:
        return FetchAnswer(FETCH_ERROR, str(exc))
    except client.NoAnswer:
        return None
    return FetchAnswer(client.fetch_exit_code(answer), client.message_of(answer))


@contextlib.contextmanager
def segment_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the segment file while pushing it (released if the process dies).

    PostgreSQL does not lock WAL files, so this only orders Aegis's own pushers.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- the stdlib-only client's postgresql.conf lines -------------------------------------------------------

def command_lines(socket_path: Path | None, config: str | None) -> tuple[str, str]:
    """The exact ``archive_command`` and ``restore_command`` lines of the stdlib-only fast path
    (``socket_path`` None: the default beside the segments). Only the config's path and a SQLite
    catalog's absolute URL go in the line's environment, never a secret (a PostgreSQL URL may hold a
    password; the key belongs in ``encryption.key_file``)."""
    import shlex

    env = f"AEGIS_CONFIG={shlex.quote(os.path.abspath(config))} " if config else ""
    url = os.environ.get("AEGIS_DATABASE_URL", "")
    if url.startswith("sqlite:////"):
        env += f"AEGIS_DATABASE_URL={shlex.quote(url)} "
    base = f"{env}{shlex.quote(sys.executable)} -I -S {shlex.quote(os.path.abspath(client.__file__))}"
    option = f" --socket {shlex.quote(os.fspath(socket_path))}" if socket_path else ""
    return f"{base} push{option} %p", f"{base} fetch{option} %f %p"
