"""A responder team walking one incident through Slack: ``aegis serve`` as a process, the emulator as Slack."""

from __future__ import annotations

import time
from typing import Any

from slack_emulator.driver import SlackDriver
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import require_id
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.slack_reading import channel, channel_by_id, message_with_button


class Walk:
    """A responder team walking one incident through Slack."""

    def __init__(self, bot: AegisProcess, emulator: EmulatorServer, driver: SlackDriver | None = None) -> None:
        self.bot = bot
        self.emulator = emulator
        self.state = emulator.state
        self.driver = driver or emulator.driver
        self.store = bot.store()
        self.channel_id = ""
        self.incident_id = 0

    def declare(self, text: str = "incident database_failure critical primary database is down") -> None:
        started = time.monotonic()
        response = self.driver.slash("U0IC", text)
        assert response.status_code == 200 and time.monotonic() - started < 3
        chan = wait_for(lambda: channel(self.state, "inc-"), what="the incident channel")
        self.channel_id = chan["id"]
        with self.store.session() as session:
            incident = svc.find_by_channel(session, self.channel_id)
            assert incident is not None
            self.incident_id = require_id(incident)

    def chan(self) -> dict[str, Any]:
        return channel_by_id(self.state, self.channel_id)

    def click(self, user: str, action_id: str, value: str, driver: SlackDriver | None = None) -> Any:
        message = wait_for(lambda: message_with_button(self.chan(), action_id, value),
                           what=f"a {action_id} button with value {value}")
        started = time.monotonic()
        response = (driver or self.driver).click(user, action_id, value, self.channel_id, message["ts"])
        assert response.status_code == 200 and time.monotonic() - started < 3, response.text
        return response

    def incident(self) -> Any:
        with self.store.session() as session:
            return svc.get(session, self.incident_id)

    def wait_state(self, state: str, timeout: float = 60) -> None:
        wait_for(lambda: self.incident().state == state, timeout=timeout,
                 what=f"state {state} (now {self.incident().state}); log:\n{self.bot.log()[-3000:]}")

    def steps(self) -> list[Any]:
        with self.store.session() as session:
            return svc.current_steps(session, self.incident_id)

    def step(self, action: str, hook: str | None = None) -> Any:
        return next(s for s in self.steps() if s.action == action and (hook is None or s.params.get("hook") == hook))

    def wait_step(self, step_id: int, status: str, timeout: float = 60) -> Any:
        seen: list[str] = []   # the statuses it went through, for the failure message

        def reached() -> Any:
            with self.store.session() as session:
                step = svc.get_step(session, step_id)
            if not seen or seen[-1] != step.status:
                seen.append(step.status)
            return step if step.status == status else None
        try:
            return wait_for(reached, timeout=timeout, what=f"step {step_id} {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (it went through: {' → '.join(seen)})") from None

    def assemble_and_assess(self) -> None:
        self.click("U0IC", "aegis_claim_role", "incident_commander")
        self.wait_state("assessed")
        wait_for(lambda: message_with_button(self.chan(), "aegis_approve"), what="the plan message")

    def ledger(self, step_id: int) -> list[Any]:
        with self.store.session() as session:
            return svc.ledger_for_step(session, step_id)


def close_with_modal(walk: Walk, emulator: EmulatorServer, user: str, summary: str) -> None:
    walk.click(user, "aegis_close", str(walk.incident_id))
    view = wait_for(lambda: [v for v in emulator.state.views(user=user) if v.get("callback_id") == "aegis_close_submit"
                             and v.get("status") == "open"], what="the close modal")[-1]
    walk.driver.submit_view(user, view["id"], {"summary": {"value": {"type": "plain_text_input", "value": summary}}})
    walk.wait_state("closed")
