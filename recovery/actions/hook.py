"""Site-specific steps (fencing, DNS/traffic switch, …): run a command or call a webhook.

Commands run without a shell in their own process group, so a timeout kills the hook *and*
everything it started.

**A hook's environment is minimal**, never a copy of Aegis's own (which holds the Slack token, the
backup key, database passwords and cloud credentials). A command — and its ``done_check`` — gets
only:

- ``PATH`` (``os.defpath`` when Aegis has none), ``HOME``, ``LANG`` and ``LC_*`` from Aegis's
  environment;
- the hook's ``env`` (literal, non-secret values written in the config);
- the variables named in the hook's ``pass_env``, with their values from Aegis's environment (an
  unset one is left out); these values are secrets and are masked in everything the hook prints;
- the context: ``AEGIS_HOOK``, ``AEGIS_INCIDENT``, ``AEGIS_STEP``, ``AEGIS_SCENARIO`` (these win
  over ``env``, so a hook cannot be told it is another one).

Nothing else, whatever its name, unless the config lists it by name. A webhook sends the context as
JSON and, as headers, only those of ``headers_env`` (values read from the environment at call time,
never stored on the action or echoed back); it ignores ``~/.netrc`` (which would add credentials the
config never mentioned) but still honours the proxy and CA bundle variables.

Output is redacted (:func:`recovery.redact.redact`: the declared secrets registered at start, plus
this hook's ``pass_env`` and header values) before it reaches progress lines, errors or the ledger.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import requests

from recovery.actions.base import Action, ActionError, Progress
from recovery.redact import redact, secret_values
from statemachines.json_types import JsonObject

STDOUT_TAIL_CHARS = 2000
_KILL_GRACE_SECONDS = 2.0
_PIPE_GRACE_SECONDS = 1.0
_INHERITED = frozenset({"PATH", "HOME", "LANG"})   # plus every LC_*


def _pump(stream: IO[str], tag: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    """Forward a pipe line by line to the main thread (which owns the progress callback)."""
    try:
        for line in stream:
            lines.put((tag, line.rstrip("\n")))
    finally:
        lines.put((tag, None))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the hook's process group, then SIGKILL whatever is left after a short grace."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            # the leader is gone; children may still linger in the group
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class HookAction(Action):
    """Run ``command`` (argv list, no shell) or POST to ``webhook``; exactly one of the two."""

    kind = "hook"
    destructive = True

    def __init__(
        self,
        name: str,
        command: list[str] | None = None,
        webhook: str | None = None,
        timeout_seconds: float = 60,
        env: dict[str, str] | None = None,
        headers_env: dict[str, str] | None = None,
        done_check: list[str] | None = None,
        context: dict[str, str] | None = None,
        pass_env: list[str] | None = None,
    ) -> None:
        if (command is None) == (webhook is None):
            raise ValueError(f"hook {name}: give exactly one of command or webhook")
        if command is not None and not command:
            raise ValueError(f"hook {name}: command must not be empty")
        self.name = name
        self.command = list(command) if command is not None else None
        self.webhook = webhook
        self.timeout_seconds = float(timeout_seconds)
        self.env = dict(env or {})
        self.headers_env = dict(headers_env or {})
        self.pass_env = list(pass_env or [])
        self.done_check = list(done_check) if done_check else None
        self.context = dict(context or {})

    # -- helpers -----------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        """This hook's own secrets: what it is passed through ``pass_env`` and its header values."""
        names = [*self.pass_env, *self.headers_env.values()]
        values = [os.environ.get(name, "") for name in names]
        # a header's credential without its scheme ("Bearer abc" → "abc") may be echoed alone
        return [v for value in values for v in (value, value.partition(" ")[2]) if v]

    def _redact(self, text: str) -> str:
        # Secret-looking names in the hook's own env are masked too (defence in depth).
        return redact(text, [*self._secrets(), *secret_values(self.env)])

    def _environment(self) -> dict[str, str]:
        """The minimal environment described in the module docstring — nothing inherited by default."""
        env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}
        env.setdefault("PATH", os.defpath)
        env.update(self.env)
        env.update({name: os.environ[name] for name in self.pass_env if name in os.environ})
        env["AEGIS_HOOK"] = self.name
        for key, value in self.context.items():
            env[f"AEGIS_{key.upper()}"] = str(value)
        return env

    def describe(self) -> str:
        if self.command is not None:
            # Only the program name: arguments may carry tokens.
            return f"Run hook {self.name} ({Path(self.command[0]).name})"
        host = urlsplit(self.webhook or "").hostname or "?"
        return f"Call hook {self.name} (webhook on {host})"

    # -- execute -----------------------------------------------------------------------------

    def execute(self, progress: Progress) -> JsonObject:
        if self.command is not None:
            return self._run_command(self.command, progress)
        return self._call_webhook()

    def _run_command(self, command: list[str], progress: Progress) -> JsonObject:
        proc = self._spawn(command, capture=True)
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=_pump, args=(s, t, lines), daemon=True)
                   for s, t in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for reader in readers:
            reader.start()
        tail = _Tail(STDOUT_TAIL_CHARS)
        last_stderr = ""
        open_streams = 2
        deadline = time.monotonic() + self.timeout_seconds
        exited_at: float | None = None
        try:
            while open_streams:
                now = time.monotonic()
                if now >= deadline:
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                # A daemon started by the hook may keep our pipes open after the hook exits.
                if exited_at is not None and now - exited_at > _PIPE_GRACE_SECONDS:
                    break
                try:
                    tag, line = lines.get(timeout=min(deadline - now, 0.2))
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                elif tag == "out":
                    safe = self._redact(line)
                    progress(safe)
                    tail.add(safe)
                elif line.strip():
                    last_stderr = line.strip()
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        finally:
            timed_out = proc.poll() is None
            # Also on success: whatever the hook left running in its group does not outlive it.
            _kill_group(proc)
            for reader in readers:
                reader.join(timeout=1)
        if timed_out:
            raise ActionError(f"hook {self.name} timed out after {self.timeout_seconds:g}s")
        if proc.returncode != 0:
            reason = f": {self._redact(last_stderr)[:300]}" if last_stderr else ""
            raise ActionError(f"hook {self.name} failed with exit code {proc.returncode}{reason}")
        return {"exit_code": proc.returncode, "stdout_tail": tail.text()}

    def _spawn(self, command: list[str], capture: bool) -> subprocess.Popen[str]:
        sink = subprocess.PIPE if capture else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                command,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                text=True,
                errors="replace",
                start_new_session=True,  # own process group: a timeout kills the whole tree
            )
        except OSError as exc:
            raise ActionError(f"hook {self.name} could not start {Path(command[0]).name}: "
                              f"{self._redact(exc.strerror or str(exc))}") from None

    def _call_webhook(self) -> JsonObject:
        assert self.webhook is not None
        headers: dict[str, str] = {}
        for header, var in self.headers_env.items():
            value = os.environ.get(var)
            if not value:
                raise ActionError(
                    f"hook {self.name}: environment variable {var} (for header {header}) is not set")
            headers[header] = value
        secrets = [*headers.values(), *self._secrets()]
        host = urlsplit(self.webhook).hostname or "?"
        try:
            resp = _post_without_ambient_credentials(self.webhook, {"hook": self.name, **self.context},
                                                     headers, self.timeout_seconds)
        except requests.Timeout:
            raise ActionError(f"hook {self.name} timed out after {self.timeout_seconds:g}s") from None
        except requests.RequestException as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", secrets)[:300]
            raise ActionError(f"hook {self.name}: webhook on {host} unreachable ({reason})") from None
        # redact before cutting: a cut through a secret would leave its unmasked half behind
        body = redact(resp.text[-65536:], secrets)
        body = self._redact(body)[-500:]
        if not 200 <= resp.status_code < 300:
            raise ActionError(f"hook {self.name}: webhook on {host} answered HTTP {resp.status_code}")
        return {"status_code": resp.status_code, "response_tail": body}

    # -- resume ------------------------------------------------------------------------------

    def is_done(self) -> bool | None:
        if not self.done_check:
            return None
        try:
            proc = self._spawn(self.done_check, capture=False)
        except ActionError:
            return None
        try:
            return proc.wait(timeout=self.timeout_seconds) == 0
        except subprocess.TimeoutExpired:
            return None
        finally:
            _kill_group(proc)


def _post_without_ambient_credentials(url: str, body: JsonObject, headers: dict[str, str],
                                     timeout: float) -> requests.Response:
    """POST with exactly our headers: no ``~/.netrc`` credentials, but the proxy and CA settings kept."""
    with requests.Session() as session:
        session.trust_env = False   # trust_env would also add netrc's Authorization for the host
        proxies = requests.utils.get_environ_proxies(url)
        verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return session.post(url, json=body, headers=headers, timeout=timeout, proxies=proxies, verify=verify)


class _Tail:
    """The last ``limit`` characters of a line stream, without keeping the whole stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[str] = deque()
        self.size = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while len(self.lines) > 1 and self.size - len(self.lines[0]) - 1 >= self.limit:
            self.size -= len(self.lines.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self.lines)[-self.limit:]
