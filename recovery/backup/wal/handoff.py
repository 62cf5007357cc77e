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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The default socket: beside the segments, so it needs no setting and is private to the server's user
# (pg_wal is inside the 0700 data directory; pg_basebackup and pg_rewind copy only WAL-named files from it).
DEFAULT_SOCKET_NAME = "aegis-archiver.sock"
PROTOCOL = 1
_MAX_LINE = 64 * 1024
_SUN_PATH_MAX = 107   # sockaddr_un.sun_path is 108 bytes including the terminating NUL


class HandoffError(Exception):
    """The archiver cannot be used as configured (e.g. a socket path too long to bind)."""


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
    absolute = Path(os.path.abspath(segment_path))
    try:
        info = os.stat(absolute)
    except OSError:
        return None   # the caller's own push reports the missing file as today
    try:
        owner = os.stat(socket_path).st_uid
    except OSError:
        return None
    if owner != os.getuid():
        return None   # not our archiver: never take another user's word that a segment is safe
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        try:
            conn.connect(os.fspath(socket_path))
        except OSError:
            return None   # refused (a stale socket of a dead archiver), or gone
        if peer_uid(conn) != os.getuid():
            return None
        conn.settimeout(timeout)
        try:
            conn.sendall(encode({"v": PROTOCOL, "op": "push", "path": os.fspath(absolute),
                                 "name": absolute.name, "size": info.st_size}))
            line = read_line(conn)
        except TimeoutError:
            return Answer(False, f"the archiver gave no answer within {timeout:g} s")
        except OSError:
            return None   # the archiver died mid-push
        if line is None:
            return None
        reply = json.loads(line)
        return Answer(bool(reply.get("durable")), str(reply.get("message", "")))
    finally:
        conn.close()


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
