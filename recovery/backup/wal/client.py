"""The fastest ``archive_command`` / ``restore_command``: a client of ``aegis wal archiver`` that imports
nothing but ``os``, ``sys``, ``socket`` and ``struct``.

Run by the install's interpreter without ``site`` and isolated from the environment's Python settings::

    archive_command = 'AEGIS_CONFIG=… /opt/aegis/bin/python -I -S …/recovery/backup/wal/client.py push %p'
    restore_command = 'AEGIS_CONFIG=… /opt/aegis/bin/python -I -S …/recovery/backup/wal/client.py fetch %f %p'

(``aegis wal archiver`` and ``aegis config check`` print both lines: ``handoff.command_lines``.) It sends
one request line to the archiver's socket and exits with its answer: push 0 only when the archiver
answers that the segment is durably on the targets with its catalog row (B6), else 1; fetch 0 restored,
1 absent, 255 error. When no archiver answers — no socket, a stale one, another user's, or an archiver
that died before answering — it replaces itself (``exec``) with ``aegis wal push %p`` / ``aegis wal
fetch %f %p`` beside the interpreter, which push or fetch the segment themselves exactly as without an
archiver.

Every import costs per segment (under load on 2 cores json, re, dataclasses and pathlib took tens of
milliseconds), so this module writes its one JSON request by hand and reads the archiver's answer by
its fixed prefix (``{"durable":true,`` / ``{"status":"restored",``: the archiver's keys come first, in
that order). ``recovery/backup/wal/handoff.py`` is the archiver's side of the protocol and the CLI's
client; both use these functions, so there is one client.
"""

import os
import socket
import struct
import sys

DEFAULT_SOCKET_NAME = "aegis-archiver.sock"
PROTOCOL = 1
MAX_LINE = 64 * 1024
# restore_command's and archive_command's exit codes (recovery/backup/wal/commands.py: FETCH_*, PUSH_*),
# repeated here so that this module imports nothing of Aegis; tests/test_wal_fast_fetch.py checks they agree
FETCH_RESTORED, FETCH_ABSENT, FETCH_ERROR = 0, 1, 255
PUSH_FAILED = 1
_PEERCRED = struct.calcsize("3i")


class NoAnswer(Exception):
    """No archiver of ours answered: the caller does the work itself."""


class AnswerTimeout(Exception):
    """The archiver took the request but gave no answer in time: a failure, not a reason to redo it."""


def json_string(text: str) -> str:
    """``text`` as a JSON string literal (ASCII only; a path's undecodable bytes, kept by Python as lone
    surrogates, survive the round trip through the archiver's ``json.loads``)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    out.append('"')
    return "".join(out)


def message_of(line: bytes) -> str:
    """The ``message`` of an answer line, for the log (its JSON escapes undone, roughly)."""
    text = line.decode("ascii", "replace").strip()
    start = text.find('"message":"')
    if start < 0:
        return ""
    body = text[start + len('"message":"'):].rsplit('"', 1)[0]
    return body.replace('\\"', '"').replace("\\\\", "\\")


def ask(socket_path: str, request: str, timeout: float) -> bytes:
    """Send one request line (a JSON object's members, without braces) and return the answer line.

    ``NoAnswer`` when there is no archiver of ours to ask, or it closed the connection first (killed
    mid-push); ``AnswerTimeout`` when it took the request but did not answer within ``timeout``.
    """
    uid = os.getuid()
    try:
        if os.stat(socket_path).st_uid != uid:
            raise NoAnswer("not our archiver")   # never take another user's word that a segment is safe
    except OSError:
        raise NoAnswer("no socket") from None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        try:
            conn.connect(socket_path)
        except OSError:
            raise NoAnswer("refused") from None   # a stale socket of a dead archiver, or gone
        if struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED))[1] != uid:
            raise NoAnswer("peer of another user")
        conn.settimeout(timeout)
        data = b""
        try:
            conn.sendall(f'{{"v":{PROTOCOL},{request}}}\n'.encode("ascii"))
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    raise NoAnswer("closed before answering")
                data += chunk
                if len(data) > MAX_LINE:
                    raise NoAnswer("answer too long")
        except TimeoutError:
            raise AnswerTimeout(f"the archiver gave no answer within {timeout:g} s") from None
        except OSError:
            raise NoAnswer("connection lost") from None
        return data
    finally:
        conn.close()


def push_request(segment_path: str) -> str:
    """The request for ``segment_path`` (``NoAnswer`` when it cannot be stat'ed: the full push reports it)."""
    absolute = os.path.abspath(segment_path)
    try:
        size = os.stat(absolute).st_size
    except OSError:
        raise NoAnswer("no segment") from None
    return f'"op":"push","path":{json_string(absolute)},"name":{json_string(os.path.basename(absolute))},"size":{size}'


def durable(answer: bytes) -> bool:
    return answer.startswith(b'{"durable":true,')


def fetch_request(name: str, dest: str) -> str:
    return f'"op":"fetch","name":{json_string(name)},"dest":{json_string(os.path.abspath(dest))}'


def fetch_exit_code(answer: bytes) -> int:
    if answer.startswith(b'{"status":"restored",'):
        return FETCH_RESTORED
    if answer.startswith(b'{"status":"absent",'):
        return FETCH_ABSENT
    return FETCH_ERROR


def socket_for(wal_file: str, socket_option: str | None) -> str:
    """``--socket`` if given (relative: to the data directory), else ``pg_wal/aegis-archiver.sock`` beside
    ``%p``: PostgreSQL runs both commands in the data directory, ``%p`` being ``pg_wal/<file>``."""
    wal_dir = os.path.dirname(os.path.abspath(wal_file))
    if socket_option:
        return os.path.join(os.path.dirname(wal_dir), socket_option)   # an absolute option wins
    return os.path.join(wal_dir, DEFAULT_SOCKET_NAME)


def full_command() -> list[str]:
    """``aegis`` beside this interpreter (its install's console script), else ``python -P -m bot.cli``."""
    beside = os.path.join(os.path.dirname(sys.executable), "aegis")
    if os.access(beside, os.X_OK):
        return [beside]
    return [sys.executable, "-P", "-m", "bot.cli"]


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    """``client.py push [--socket S] [--timeout T] %p`` / ``client.py fetch [--socket S] [--timeout T] %f %p``."""
    options: dict[str, str] = {}
    words: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        option, eq, value = arg.partition("=")
        if option in ("--socket", "--timeout") and (eq or args):
            options[option[2:]] = value if eq else args.pop(0)
        else:
            words.append(arg)
    command = words[0] if words else ""
    failed = FETCH_ERROR if command == "fetch" else PUSH_FAILED   # a bad line never reads as "absent"
    try:
        timeout = float(options.get("timeout", "600"))
    except ValueError:
        timeout = -1.0
    if timeout <= 0 or (command, len(words)) not in (("push", 2), ("fetch", 3)):
        _say("usage: client.py push [--socket PATH] [--timeout S] %p | fetch [--socket PATH] [--timeout S] %f %p")
        return failed
    try:
        if command == "push":
            answer = ask(socket_for(words[1], options.get("socket")), push_request(words[1]), timeout)
            _say(f"aegis wal push: {message_of(answer)}")
            return 0 if durable(answer) else PUSH_FAILED
        answer = ask(socket_for(words[2], options.get("socket")), fetch_request(words[1], words[2]), timeout)
        code = fetch_exit_code(answer)
        if code == FETCH_ERROR:
            _say(f"aegis wal fetch: {message_of(answer)}")
        return code
    except AnswerTimeout as exc:
        _say(f"aegis wal {command}: {exc}")
        return failed
    except NoAnswer:
        pass
    # no archiver answered: the full command pushes / fetches the segment itself
    full = [*full_command(), "wal", *words]
    try:
        os.execv(full[0], full)
    except OSError as exc:
        _say(f"aegis wal {command}: cannot run {full[0]}: {exc}")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
