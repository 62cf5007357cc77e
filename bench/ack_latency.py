"""Ack latency of ``POST /slack/events``: ``aegis serve`` versus a bare Bolt app served the same way.

Three child processes, all on 127.0.0.1: the Slack emulator (``python -m slack_emulator.server``),
``aegis serve`` (SQLite store in a temp dir, Web API pointed at the emulator) and the peer, a bare
Bolt app whose listeners only ``ack()``, wrapped by ``bot.slack.server.make_wsgi`` and served by
``bot.slack.server.HttpServer`` (waitress, 32 threads) — ``python bench/ack_latency.py --serve-bare``.

For each request kind (``/aegis status`` in an incident channel; a button click) × concurrency
(1, 10, 50) × target, the bench sends a warm-up, waits until every child is idle again (no CPU
for a while, so the previous cell's background work is not measured), then sends ``--requests``
freshly signed requests from a thread pool of that size (one keep-alive ``requests.Session`` per
thread) and records each one's HTTP round trip. Both targets get byte-for-byte the same kind of
body; every request carries its own trigger_id/response_url minted by the emulator (outside the
timed part), as Slack would send.

Usage::

    python bench/ack_latency.py            # 300 requests per cell
    python bench/ack_latency.py --quick    # 50 requests per cell

Exit status: 0 whether or not the latency goals are met; 1 if a child fails to start or any
request does not get HTTP 200.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from slack_sdk.signature import SignatureVerifier

from slack_emulator.driver import FORM, VERIFICATION_TOKEN, SlackDriver
from slack_emulator.model import APP_ID, TEAM_DOMAIN, TEAM_ID

BOT_TOKEN = "xoxb-bench-4242-BENCHBOTTOKEN"
SIGNING_SECRET = "bench-signing-secret-0123456789abcdef"
USER = "U0IC"
BOGUS_STEP = "999999"
GOAL_RATIO = 1.5
GOAL_P99_MS = 3000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A target could not be started or set up: the run is invalid."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the peer: a bare Bolt app, served like aegis -------------------------------------------------

def serve_bare(host: str, port: int) -> int:
    from slack_bolt import App
    from slack_sdk import WebClient

    from bot.logs import setup_logging
    from bot.slack.server import HttpServer, make_wsgi

    setup_logging("INFO")  # same logging set-up as ``aegis serve``
    app = App(
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        client=WebClient(base_url=os.environ["SLACK_API_URL"], token=os.environ["SLACK_BOT_TOKEN"]),
        token_verification_enabled=False,
        process_before_response=False,
    )

    @app.command("/aegis")
    def on_command(ack: Any) -> None:
        ack()

    @app.action(re.compile(".*"))
    def on_action(ack: Any) -> None:
        ack()

    # the same front door as aegis: the signature is checked on the raw bytes before Bolt parses
    http = HttpServer(make_wsgi(app, lambda: {"ok": True}, signing_secret=os.environ["SLACK_SIGNING_SECRET"]),
                      host=host, port=port, threads=32).start()
    print(f"bare Bolt app listening on {http.url}/slack/events", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    http.stop()
    return 0


# ---- child processes --------------------------------------------------------------------------------

class Child:
    """One server process, in its own session so that the bench decides when it stops."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, port: int,
                 health_path: str) -> None:
        self.name, self.argv, self.env, self.workdir, self.port = name, argv, env, workdir, port
        self.health_path = health_path
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Child:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited early ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(self.url + self.health_path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.name} did not become healthy in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_ticks(self) -> int:
        """utime + stime of the process so far, in clock ticks (Linux /proc)."""
        if not self.alive():
            return 0
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _self_ticks() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _system_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine (all CPUs) from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


class OtherLoad:
    """CPU used by processes other than this bench and its children (other jobs on the box): noise."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = children
        self._start = self._sample()
        self._t0 = time.perf_counter()

    def _sample(self) -> int:
        return _system_busy_ticks() - _self_ticks() - sum(c.cpu_ticks() for c in self.children)

    def cores(self) -> float:
        wall = time.perf_counter() - self._t0
        return max(0.0, (self._sample() - self._start) / CLK_TCK / wall) if wall > 0 else 0.0


def settle(children: Sequence[Child], window: float = 0.25, quiet_ticks: int = 1, calm_windows: int = 3,
           timeout: float = 120) -> bool:
    """Wait until no child burns more than ``quiet_ticks`` of CPU per window, ``calm_windows`` in a row."""
    deadline = time.monotonic() + timeout
    before = [c.cpu_ticks() for c in children]
    calm = 0
    while time.monotonic() < deadline:
        time.sleep(window)
        now = [c.cpu_ticks() for c in children]
        calm = calm + 1 if all(n - b <= quiet_ticks for n, b in zip(now, before, strict=True)) else 0
        if calm >= calm_windows:
            return True
        before = now
    return False


# ---- what Slack sends ---------------------------------------------------------------------------------

@dataclass
class Incident:
    channel_id: str
    channel_name: str
    card: dict[str, Any]


class Workload:
    """Builds the signed bodies of one request kind, each with its own trigger_id and response_url."""

    def __init__(self, kind: str, emulator_url: str, incident: Incident, user_name: str, click: str) -> None:
        self.kind, self.emulator_url, self.incident, self.user_name = kind, emulator_url, incident, user_name
        self.action_id, self.value = ("aegis_approve", BOGUS_STEP) if click == "approve" else \
            ("aegis_claim_role", "incident_commander")
        self._verifier = SignatureVerifier(SIGNING_SECRET)
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def _interaction(self) -> tuple[str, str]:
        message_ts = self.incident.card["ts"] if self.kind == "click" else None
        resp = self._session.post(f"{self.emulator_url}/_emulator/interactions", timeout=10,
                                  json={"user": USER, "channel": self.incident.channel_id, "message_ts": message_ts})
        resp.raise_for_status()
        body = resp.json()
        return body["trigger_id"], f"{self.emulator_url}/_emulator/response/{body['response_id']}"

    def bodies(self, n: int) -> list[str]:
        return [self._body(*self._interaction()) for _ in range(n)]

    def _body(self, trigger_id: str, response_url: str) -> str:
        # The same fields, in the same order, as slack_emulator.driver.SlackDriver.slash / .click.
        if self.kind == "status":
            return urlencode({
                "token": VERIFICATION_TOKEN, "team_id": TEAM_ID, "team_domain": TEAM_DOMAIN,
                "channel_id": self.incident.channel_id, "channel_name": self.incident.channel_name,
                "user_id": USER, "user_name": self.user_name, "command": "/aegis", "text": "status",
                "api_app_id": APP_ID, "is_enterprise_install": "false", "response_url": response_url,
                "trigger_id": trigger_id,
            })
        card = self.incident.card
        block_id, element = _find_button(card.get("blocks") or [], "aegis_claim_role")
        action: dict[str, Any] = {"action_id": self.action_id, "block_id": block_id or "b", "value": self.value,
                                  "type": "button", "action_ts": f"{time.time():.6f}"}
        if element is not None and self.action_id == "aegis_claim_role":
            action["text"] = element.get("text")
        keep = ("type", "user", "bot_id", "app_id", "text", "blocks", "ts", "thread_ts", "team", "edited")
        payload = {
            "type": "block_actions",
            "user": {"id": USER, "username": self.user_name, "name": self.user_name, "team_id": TEAM_ID},
            "api_app_id": APP_ID, "token": VERIFICATION_TOKEN,
            "container": {"type": "message", "message_ts": card["ts"], "channel_id": self.incident.channel_id,
                          "is_ephemeral": False},
            "trigger_id": trigger_id, "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "enterprise": None, "is_enterprise_install": False,
            "channel": {"id": self.incident.channel_id, "name": self.incident.channel_name},
            "state": {"values": {}}, "response_url": response_url, "actions": [action],
            "message": {k: card[k] for k in keep if k in card},
        }
        return urlencode({"payload": json.dumps(payload)})

    def sign(self, body: str) -> dict[str, str]:
        ts = str(int(time.time()))
        return {"Content-Type": FORM, "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": self._verifier.generate_signature(timestamp=ts, body=body) or ""}


def _find_button(blocks: list[dict[str, Any]], action_id: str) -> tuple[str | None, dict[str, Any] | None]:
    for block in blocks:
        elements = list(block.get("elements") or []) + ([block["accessory"]] if "accessory" in block else [])
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    return None, None


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


def set_up_incident(aegis: Child, emulator: Child, click: str) -> Incident:
    """Declare an incident through aegis and return its channel and the incident card."""
    driver = SlackDriver(aegis.url, SIGNING_SECRET, None, emulator.url)
    resp = driver.slash(USER, "incident database_failure critical bench")
    if resp.status_code != 200:
        raise BenchError(f"declaring the incident got HTTP {resp.status_code}: {resp.text[:300]}")

    def card() -> tuple[dict[str, Any], dict[str, Any]] | None:
        channels = requests.get(f"{emulator.url}/_emulator/channels", timeout=10).json()
        for chan in channels:
            if not chan["name"].startswith("inc-"):
                continue
            for message in reversed(chan["messages"]):
                if _find_button(message.get("blocks") or [], "aegis_claim_role")[1] is not None:
                    return chan, message
        return None

    chan, message = wait_for(card, "the incident channel with a claim button")
    if click == "claim":  # the first claim changes state; the measured ones are idempotent repeats
        resp = driver.click(USER, "aegis_claim_role", "incident_commander", chan["id"], message["ts"])
        if resp.status_code != 200:
            raise BenchError(f"claiming the commander role got HTTP {resp.status_code}")
    return Incident(chan["id"], chan["name"], message)


# ---- measuring ----------------------------------------------------------------------------------------

@dataclass
class Cell:
    latencies: list[float] = field(default_factory=list)  # seconds
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    cpu_ms_per_request: float = 0.0
    other_cores: float = 0.0  # CPU other processes on the machine used while the cell ran
    settled: bool = True

    def pct(self, q: int) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        if len(data) == 1:
            return data[0] * 1000
        return statistics.quantiles(data, n=100, method="inclusive")[q - 1] * 1000


class Client:
    """A pool of ``concurrency`` threads, each with its own keep-alive session."""

    def __init__(self, url: str, concurrency: int, workload: Workload, timeout: float = 30) -> None:
        self.url, self.workload, self.timeout = url + "/slack/events", workload, timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-client")
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _one(self, body: str) -> tuple[float, str | None]:
        session = self._session()
        headers = self.workload.sign(body)
        started = time.perf_counter()
        try:
            resp = session.post(self.url, data=body, headers=headers, timeout=self.timeout)
            _ = resp.content
        except requests.RequestException as exc:
            return time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        return elapsed, None if resp.status_code == 200 else f"HTTP {resp.status_code}: {resp.text[:200]}"

    def run(self, bodies: list[str], cell: Cell | None = None) -> float:
        started = time.perf_counter()
        for elapsed, failure in self._pool.map(self._one, bodies):
            if cell is not None:
                cell.latencies.append(elapsed)
                if failure:
                    cell.failures.append(failure)
            elif failure:
                raise BenchError(f"warm-up request failed: {failure}")
        return time.perf_counter() - started

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for session in self._sessions:
                session.close()


def measure(target: Child, children: Sequence[Child], workload: Workload, concurrency: int, requests_n: int,
            warmup_n: int) -> Cell:
    cell = Cell()
    warm, bodies = workload.bodies(warmup_n), workload.bodies(requests_n)
    client = Client(target.url, concurrency, workload)
    try:
        cell.settled &= settle(children)
        client.run(warm)
        cell.settled &= settle(children)
        ticks, other = target.cpu_ticks(), OtherLoad(children)
        cell.wall = client.run(bodies, cell)
        cell.other_cores = other.cores()
        cell.settled &= settle(children)  # count the background work these requests caused, too
        cell.cpu_ms_per_request = (target.cpu_ticks() - ticks) * 1000 / CLK_TCK / requests_n
    finally:
        client.close()
    return cell


# ---- report -------------------------------------------------------------------------------------------

def machine_facts() -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{p} {_version(p)}" for p in ("slack_bolt", "slack_sdk", "waitress", "requests"))
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: nproc {affinity} (cpu_count {os.cpu_count()}), load avg {load}",
        f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.platform()}",
        f"libraries: {versions}",
    ]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def print_report(results: dict[tuple[str, int, str], Cell], kinds: list[str], levels: list[int], click: str) -> None:
    click_desc = (f"aegis_approve with unknown step {BOGUS_STEP} (refused after the ack)" if click == "approve"
                  else "aegis_claim_role incident_commander, repeated by its holder (no-op + card refresh after ack)")
    print()
    print("ack latency of POST /slack/events, ms (HTTP round trip measured by the client)")
    print(f"  status = '/aegis status' in the incident channel; click = {click_desc}")
    header = (f"{'kind':<7}{'conc':>5} | {'aegis p50':>9} {'aegis p99':>9} | {'bare p50':>9} {'bare p99':>9} | "
              f"{'p99 ratio':>9} | {'aegis rps':>9} {'bare rps':>9} | {'aegis cpu/req':>13} {'bare cpu/req':>12}")
    print(header)
    print("-" * len(header))
    for kind in kinds:
        for level in levels:
            a, b = results[(kind, level, "aegis")], results[(kind, level, "bare")]
            print(f"{kind:<7}{level:>5} | {a.pct(50):>9.1f} {a.pct(99):>9.1f} | {b.pct(50):>9.1f} {b.pct(99):>9.1f} | "
                  f"{ratio(a.pct(99), b.pct(99)):>9.2f} | {len(a.latencies) / a.wall:>9.0f} "
                  f"{len(b.latencies) / b.wall:>9.0f} | {a.cpu_ms_per_request:>10.2f} ms "
                  f"{b.cpu_ms_per_request:>9.2f} ms")
    print("  (rps = requests / wall time of the cell; cpu/req = server process CPU per request, "
          "including work done after the ack, until idle)")
    noisy = [f"{kind}/{level}/{name} {cell.other_cores:.2f}" for (kind, level, name), cell in results.items()
             if cell.other_cores >= 0.1]
    if noisy:
        print(f"  NOISE: other processes on this machine used CPU (cores) during: {', '.join(noisy)}")
    top = max(levels)
    print()
    print(f"goals at {top} concurrent: p99 ratio aegis/bare <= {GOAL_RATIO} and aegis p99 < {GOAL_P99_MS:.0f} ms")
    for kind in kinds:
        a, b = results[(kind, top, "aegis")], results[(kind, top, "bare")]
        r, p99 = ratio(a.pct(99), b.pct(99)), a.pct(99)
        ok_r, ok_p = r <= GOAL_RATIO, p99 < GOAL_P99_MS
        print(f"  {kind:<7} ratio {r:5.2f} ({'ok' if ok_r else 'MISSED'}), aegis p99 {p99:7.1f} ms "
              f"({'ok' if ok_p else 'MISSED'}) -> {'MET' if ok_r and ok_p else 'NOT MET'}")


# ---- main ---------------------------------------------------------------------------------------------

def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    kinds = ["status", "click"]
    requests_n = 50 if args.quick else args.requests
    warmup_n = args.warmup
    cells = len(kinds) * len(levels) * 2
    for line in machine_facts():
        print(line)
    print(f"requests: {requests_n} measured + {warmup_n} warm-up per cell; {cells} cells "
          f"({len(kinds)} kinds x concurrency {levels} x 2 targets) = {cells * (requests_n + warmup_n)} "
          f"requests to the targets (+ as many trigger_id/response_url mints at the emulator)")
    sys.stdout.flush()

    children: list[Child] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="aegis-bench-") as tmp:
        workdir = Path(tmp)
        try:
            (workdir / "aegis.yaml").write_text("{}\n")
            emu_port, aegis_port, bare_port = free_port(), free_port(), free_port()
            base_env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                        "PYTHONUNBUFFERED": "1"}
            base_env.pop("SLACK_APP_TOKEN", None)
            emulator = Child("emulator", [sys.executable, "-m", "slack_emulator.server", "--host", "127.0.0.1",
                                          "--port", str(emu_port), "--bot-url", f"http://127.0.0.1:{aegis_port}"],
                             base_env, workdir, emu_port, "/_emulator/channels")
            children.append(emulator.start())
            env = {**base_env, "SLACK_API_URL": emulator.url + "/api/",
                   "AEGIS_DATABASE_URL": f"sqlite:///{workdir / 'aegis.db'}",
                   "AEGIS_CONFIG": str(workdir / "aegis.yaml")}
            aegis = Child("aegis", [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1",
                                    "--port", str(aegis_port)], env, workdir, aegis_port, "/healthz")
            children.append(aegis.start())
            bare = Child("bare", [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--host",
                                  "127.0.0.1", "--port", str(bare_port)], env, workdir, bare_port, "/healthz")
            children.append(bare.start())
            print(f"started: emulator pid {emulator.proc.pid if emulator.proc else '?'}, "
                  f"aegis pid {aegis.proc.pid if aegis.proc else '?'}, bare pid {bare.proc.pid if bare.proc else '?'}")

            incident = set_up_incident(aegis, emulator, args.click)
            users = requests.get(f"{emulator.url}/_emulator/users", timeout=10).json()
            user_name = next((u["name"] for u in users if u["id"] == USER), USER.lower())
            print(f"incident channel {incident.channel_name} ({incident.channel_id}), card ts {incident.card['ts']}")

            results: dict[tuple[str, int, str], Cell] = {}
            for kind in kinds:
                workload = Workload(kind, emulator.url, incident, user_name, args.click)
                try:
                    for level in levels:
                        for name, target in (("aegis", aegis), ("bare", bare)):
                            cell = measure(target, children, workload, level, requests_n, warmup_n)
                            results[(kind, level, name)] = cell
                            failures += len(cell.failures)
                            note = "" if cell.settled else " (children never went idle; background work overlaps)"
                            print(f"  {kind:<6} c={level:<3} {name:<5} p50 {cell.pct(50):7.1f} ms  "
                                  f"p99 {cell.pct(99):7.1f} ms  failures {len(cell.failures)}  "
                                  f"other load {cell.other_cores:.2f} cores{note}", flush=True)
                            for failure in cell.failures[:3]:
                                print(f"    e.g. {failure}")
                            for child in children:
                                if not child.alive():
                                    raise BenchError(f"{child.name} died:\n{child.log_tail()}")
                finally:
                    workload.close()
            print_report(results, kinds, levels, args.click)
            errors = [line for line in aegis.log_tail(200_000).splitlines() if " ERROR " in line]
            print(f"\naegis log: {len(errors)} ERROR line(s)" + (f", e.g. {errors[0][:200]}" if errors else ""))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            stopping = time.monotonic()
            for child in reversed(children):
                child.stop()
            if children:
                print(f"stopped {len(children)} child process(es) in {time.monotonic() - stopping:.1f}s", flush=True)
    if failures:
        print(f"{failures} request(s) did not get HTTP 200", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per cell (default 300)")
    parser.add_argument("--quick", action="store_true", help="50 measured requests per cell")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per cell (default 20)")
    parser.add_argument("--concurrency", default="1,10,50", help="comma-separated levels (default 1,10,50)")
    parser.add_argument("--click", choices=("approve", "claim"), default="approve",
                        help="approve: aegis_approve on an unknown step (refused); "
                             "claim: aegis_claim_role by its holder (no-op, refreshes the card)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.host, args.port)
    # Ctrl-C, kill and a closed terminal all end in run()'s finally, which stops the children (they run in
    # their own sessions, so they never see the terminal's Ctrl-C themselves). SIGINT is set explicitly
    # because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
