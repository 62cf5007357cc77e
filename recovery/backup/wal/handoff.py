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

Run as a script this module is the fastest ``archive_command`` / ``restore_command`` (the standard
library only, no ``site``)::

    archive_command = 'AEGIS_CONFIG=… /opt/aegis/bin/python -I -S …/recovery/backup/wal/handoff.py push %p'
    restore_command = 'AEGIS_CONFIG=… /opt/aegis/bin/python -I -S …/recovery/backup/wal/handoff.py fetch %f %p'

When no archiver answers it replaces itself (``exec``) with ``aegis wal push %p`` / ``aegis wal fetch
%f %p`` next to the interpreter, which push or fetch the segment themselves, exactly as without an
archiver. ``aegis wal archiver`` prints both lines for its socket (``command_lines``).
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

# The default socket: beside the segments, so it needs no setting and is private to the server's user
# (pg_wal is inside the 0700 data directory; pg_basebackup and pg_rewind copy only WAL-named files from it).
DEFAULT_SOCKET_NAME = "aegis-archiver.sock"
PROTOCOL = 1
_MAX_LINE = 64 * 1024
_SUN_PATH_MAX = 107   # sockaddr_un.sun_path is 108 bytes including the terminating NUL


class HandoffError(Exception):
    """The archiver cannot be used as configured (e.g. a socket path too long to bind)."""


# restore_command's exit codes (recovery/backup/wal/commands.py: FETCH_*), repeated here so that this
# module imports nothing of Aegis; tests/test_wal_archiver.py checks they agree
FETCH_RESTORED, FETCH_ABSENT, FETCH_ERROR = 0, 1, 255
PUSH_FAILED = 1


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
        reply = _ask(socket_path, {"op": "push", "path": os.fspath(absolute), "name": absolute.name,
                                   "size": info.st_size}, timeout)
    except TimeoutError:
        return Answer(False, f"the archiver gave no answer within {timeout:g} s")
    if reply is None:
        return None
    return Answer(bool(reply.get("durable")), str(reply.get("message", "")))


def _ask(socket_path: Path, request: dict[str, object], timeout: float) -> dict[str, object] | None:
    """One request/answer with the archiver at ``socket_path``; None: no archiver of ours answered
    (no socket, refused, another user's, or it closed the connection before answering)."""
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
            conn.sendall(encode({"v": PROTOCOL, **request}))
            line = read_line(conn)
        except TimeoutError:
            raise
        except OSError:
            return None   # the archiver died mid-request
        if line is None:
            return None
        reply = json.loads(line)
        return reply if isinstance(reply, dict) else None
    finally:
        conn.close()


@dataclass(frozen=True)
class FetchAnswer:
    """The archiver's answer to a fetch: ``exit_code`` is restore_command's (0 restored, 1 absent, 255 error)."""

    exit_code: int
    message: str


def fetch_over(socket_path: Path, name: str, dest: Path, timeout: float = 600.0) -> FetchAnswer | None:
    """Ask the archiver to restore ``name`` (``%f``) to ``dest`` (``%p``); None: no archiver answered."""
    try:
        reply = _ask(socket_path, {"op": "fetch", "name": name, "dest": os.path.abspath(dest)}, timeout)
    except TimeoutError:
        return FetchAnswer(FETCH_ERROR, f"the archiver gave no answer within {timeout:g} s")
    if reply is None:
        return None
    status = reply.get("status")
    code = {"restored": FETCH_RESTORED, "absent": FETCH_ABSENT}.get(str(status), FETCH_ERROR)
    return FetchAnswer(code, str(reply.get("message", "")))


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


# --- run as a script: the stdlib-only archive_command / restore_command ----------------------------------

def socket_for(wal_file: Path, socket_option: str | None) -> Path:
    """``--socket`` if given (relative: to the data directory), else ``pg_wal/aegis-archiver.sock`` beside
    ``%p`` (PostgreSQL runs both commands in the data directory, ``%p`` being ``pg_wal/<file>``)."""
    wal_dir = wal_dir_of(wal_file)
    if socket_option:
        return wal_dir.parent / socket_option   # an absolute option replaces the data directory
    return default_socket(wal_dir)


def full_command() -> list[str]:
    """``aegis`` beside this interpreter (the console script of its install), else ``python -P -m bot.cli``."""
    beside = Path(sys.executable).parent / "aegis"
    if os.access(beside, os.X_OK):
        return [os.fspath(beside)]
    return [sys.executable, "-P", "-m", "bot.cli"]


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
    base = f"{env}{shlex.quote(sys.executable)} -I -S {shlex.quote(os.path.abspath(__file__))}"
    option = f" --socket {shlex.quote(os.fspath(socket_path))}" if socket_path else ""
    return f"{base} push{option} %p", f"{base} fetch{option} %f %p"


def _options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    words: list[str] = []
    while args:
        arg = args.pop(0)
        if arg in ("--socket", "--timeout") and args:
            options[arg[2:]] = args.pop(0)
        elif arg.startswith("--socket=") or arg.startswith("--timeout="):
            option, _, value = arg.partition("=")
            options[option[2:]] = value
        else:
            words.append(arg)
    return options, words


def main(argv: list[str]) -> int:
    """``handoff.py push [--socket S] [--timeout T] %p`` / ``handoff.py fetch [--socket S] %f %p``."""
    options, words = _options(list(argv))
    command = words[:1]
    try:
        timeout = float(options.get("timeout", "600"))
    except ValueError:
        timeout = -1.0
    if command == ["push"] and len(words) == 2 and timeout > 0:
        segment = Path(words[1])
        answer = hand_over(socket_for(segment, options.get("socket")), segment, timeout)
        if answer is not None:
            print(f"aegis wal push: {answer.message}", file=sys.stderr, flush=True)
            return 0 if answer.durable else PUSH_FAILED
        full = ["wal", "push", words[1]]
    elif command == ["fetch"] and len(words) == 3 and timeout > 0:
        fetched = fetch_over(socket_for(Path(words[2]), options.get("socket")), words[1], Path(words[2]), timeout)
        if fetched is not None:
            if fetched.exit_code == FETCH_ERROR:
                print(f"aegis wal fetch: {fetched.message}", file=sys.stderr, flush=True)
            return fetched.exit_code
        full = ["wal", "fetch", words[1], words[2]]
    else:
        print("usage: handoff.py push [--socket PATH] [--timeout S] %p | fetch [--socket PATH] %f %p",
              file=sys.stderr)
        return FETCH_ERROR if command == ["fetch"] else PUSH_FAILED   # never "absent" for a bad line
    # no archiver answered: the full command pushes / fetches the segment itself
    argv_full = [*full_command(), *full]
    sys.stderr.flush()
    try:
        os.execv(argv_full[0], argv_full)
    except OSError as exc:
        print(f"aegis wal: cannot run {argv_full[0]}: {exc}", file=sys.stderr)
    return FETCH_ERROR if command == ["fetch"] else PUSH_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
