"""The flows of one bot process run in-process on a real store, with the emulator as Slack.

``harness_for`` builds the flows (and their outbox) on a SQLite file or a PostgreSQL database made
by ``new_store``; ``Harness`` reads back what they did. ``serve_pg`` and ``store_for`` are the
bodies of a module's ``pg_server`` and parametrised ``store`` fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.flows.incident import Flows, Refused
from bot.slack.gateway import SlackGateway
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import Incident, PlanStep, require_id
from statemachines.store import Store
from tests.harness.aegis_process import BOT_TOKEN, wait_for
from tests.harness.pgcluster import PgSingle
from tests.harness.team import ROSTER


def pg_url(server: PgSingle, database: str, user: str = "postgres") -> str:
    node = server.primary
    return f"postgresql+psycopg://{user}@/{database}?host={node.socket_dir}&port={node.port}"


def new_store(kind: str, tmp_path: Path, server: PgSingle | None) -> Store:
    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp_path}/aegis.db")
    else:
        assert server is not None
        name = f"aegis_{uuid.uuid4().hex[:10]}"
        server.primary.sql(f"CREATE DATABASE {name}")
        store = Store(pg_url(server, name))
    store.migrate()
    return store


def serve_pg() -> Iterator[PgSingle]:
    """One PostgreSQL server for a test module (each test makes its own database on it)."""
    server = PgSingle.create()
    try:
        yield server
    finally:
        server.destroy()


def store_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store of kind ``request.param`` (``sqlite`` | ``postgresql``)."""
    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    s = new_store(request.param, tmp_path, server)
    try:
        yield s
    finally:
        s.dispose()


@dataclass
class Harness:
    """The flows of one bot process, in-process, on a real store, with the emulator as Slack."""

    flows: Flows
    store: Store
    emulator: EmulatorServer
    incident_id: int = 0

    def declare(self, scenario: str = "database_failure", summary: str = "primary is down") -> None:
        incident = self.flows.declare(user_id="U0IC", scenario=scenario, severity="critical", summary=summary)
        self.incident_id = require_id(incident)
        wait_for(lambda: self.incident().card_ts, what="the incident card")

    def walk_to_assessed(self, scenario: str = "database_failure") -> None:
        self.declare(scenario)
        self.flows.claim_role(user_id="U0IC", incident_id=self.incident_id, role="incident_commander")
        self.wait_state("assessed")
        wait_for(lambda: self.steps(), what="the plan")

    def incident(self) -> Incident:
        with self.store.session() as session:
            return svc.get(session, self.incident_id)

    def steps(self) -> list[PlanStep]:
        with self.store.session() as session:
            return svc.current_steps(session, self.incident_id)

    def step(self, step_id: int) -> PlanStep:
        with self.store.session() as session:
            return svc.get_step(session, step_id)

    def wait_state(self, state: str, timeout: float = 30) -> None:
        wait_for(lambda: self.incident().state == state, timeout=timeout,
                 what=f"state {state} (now {self.incident().state})")

    def wait_step(self, step_id: int, status: str, timeout: float = 30) -> PlanStep:
        return wait_for(lambda: (s := self.step(step_id)).status == status and s, timeout=timeout,
                        what=f"step {step_id} {status} (now {self.step(step_id).status})")

    def events(self) -> list[Any]:
        with self.store.session() as session:
            return svc.timeline(session, self.incident_id)

    def stop(self) -> None:
        self.flows.pool.shutdown(wait=True)
        self.flows.outbox.stop()


def harness_for(store: Store, emulator: EmulatorServer, tmp_path: Path,
                extra: dict[str, Any] | None = None) -> Harness:
    config = Config.model_validate({"roster": ROSTER, "slack": {"stakeholder_channel": "C0STAKE"},
                                    **(extra or {})})
    gateway = SlackGateway(BOT_TOKEN, emulator.api_url, attempts=1)
    flows = Flows(config, store, gateway, owner=f"test:{uuid.uuid4().hex[:6]}")
    flows.outbox.start()   # what the flows commit reaches the emulator through the outbox, as in aegis serve
    return Harness(flows, store, emulator)


def outcome_of(call: Callable[[], None]) -> str:
    try:
        call()
    except Refused as exc:
        return exc.reason
    return "accepted"
