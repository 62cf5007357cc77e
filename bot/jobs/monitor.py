"""The monitor job (M1-M3 response side): the scheduler leader runs monitor cycles and responds.

Only the replica whose scheduler is the leader runs cycles (``Scheduler.role == "leader"``; on
SQLite the single process); a standby's loop idles and takes over with the leadership. Each cycle
(``recovery.monitor``) stores its samples and updates the conditions; this module says what
happened:

- a CRITICAL condition opens an incident declared by Aegis (``Flows.declare``: the room, the team
  of that scenario paged, the card and the stakeholder thread, as for a declared incident), writes
  the evidence that triggered it on the incident's timeline, and — through the outbox, with the
  incident — posts the critical alert in ``slack.ops_channel``. One incident per ongoing condition
  (the condition row holds its incident id; a condition left without one by a crash gets it next cycle).
  Ransomware is one incident while one is open (``ONE_OPEN_INCIDENT``): a second source's CRITICAL
  condition (another tool's signal, a changed canary) is added to the open ransomware incident — a
  timeline entry naming the source and its evidence, a line in the incident and ops channels —
  instead of declaring another; once that incident is closed, a new report opens a new one (also a
  new signal from a source whose condition still holds). Conditions are handled one after another
  on the monitor's thread, and "find the open one or declare it" is one transaction serialised across
  replicas (``lock_scenario``), so neither two conditions of one cycle nor two replicas overlapping
  during a leader change declare two;
- a HIGH condition posts a warning in the ops channel, repeated at most every
  ``monitoring.warning_repeat_minutes`` while it holds (a compare-and-set on the condition row);
- a cleared condition posts the all-clear in the ops channel.

A failing cycle is logged and retried after ``monitoring.retry_after_seconds`` (M3).
With ``monitoring.auto_recovery.<scenario>: true`` the incident is recovered by Aegis itself
(``Flows.auto_recover``): assembled by Aegis and assessed at once, its plan posted in the room the
scenario's team was invited to, read-only steps run, and a destructive step runs only when
``monitoring.pre_approved_actions`` names its action (``usecases.pre_approve``: "pre-approved by
config"; never a two-person step) — the others wait for an approver's click.
A ``POST /signals`` report (bot/signals.py) is seen by the ``signal ransomware`` check at the next cycle.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlmodel import Session, col, select

from bot.config import Config
from bot.flows.incident import Flows
from bot.monitor_checks import monitor_checks, risk_rules
from bot.slack.gateway import SlackCallFailed, SlackGateway
from messages import monitor_notices
from messages.views import Message
from recovery.monitor.history import MonitorHistory
from recovery.monitor.loop import CycleResult, Monitor, MonitorLoop
from recovery.monitor.risk import CRITICAL, Condition
from statemachines import service as svc
from statemachines import usecases
from statemachines.json_types import JsonObject
from statemachines.models import Incident, require_id, utcnow
from statemachines.store import Store

log = logging.getLogger("aegis.monitor")
DETECTOR = "aegis"                 # declared_by of an incident the monitor opened
ALERT_KIND = "monitor_alert"       # outbox row: the critical alert in the ops channel
EVIDENCE_KIND = "monitor_evidence"  # outbox row: a condition added to an open incident (incident / ops channel)
ONE_OPEN_INCIDENT = frozenset({"ransomware"})   # scenarios with one incident while one is open, whatever the source


def lock_scenario(session: Session, scenario: str) -> None:
    """Serialise "find the open incident of ``scenario`` or declare one" across replicas until commit."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"aegis:one-open-incident:{scenario}".encode()).digest()[:8], "big",
                             signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def source_of(condition: Condition) -> str:
    """Who reported it: the signal's source (``POST /signals``), else the checks (``canary finance-share``)."""
    sources = [str(e["signal"].get("source")) for e in condition.evidence
               if isinstance(e.get("signal"), dict) and e["signal"].get("source")]
    return ", ".join(dict.fromkeys(sources)) or ", ".join(condition.checks) or condition.key


def _received_at(evidence: JsonObject) -> datetime:
    signal = evidence.get("signal")
    received = signal.get("received_at") if isinstance(signal, dict) else None
    try:
        at = datetime.fromisoformat(str(received)) if received else datetime.min.replace(tzinfo=UTC)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class MonitorDuty:
    def __init__(self, config: Config, store: Store, flows: Flows, gateway: SlackGateway, *,
                 is_leader: Callable[[], bool]) -> None:
        self.config, self.store, self.flows, self.gateway = config, store, flows, gateway
        self.section = config.monitoring
        self.locale = config.locale
        self.history = MonitorHistory(store)
        self.monitor = Monitor(monitor_checks(config, store), self.history, risk_rules(self.section),
                               consecutive=self.section.consecutive)
        self.is_leader = is_leader
        self.loop = MonitorLoop(self.monitor, interval_seconds=self.section.interval_seconds,
                                retry_seconds=self.section.retry_after_seconds, on_cycle=self.respond,
                                gate=is_leader)

    def start(self) -> None:
        if self.monitor.checks:
            log.info("monitoring %d checks every %g s (leader only)", len(self.monitor.checks),
                     self.section.interval_seconds)
            self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        self.monitor.close()

    # --- what a cycle found ------------------------------------------------------------------

    def respond(self, result: CycleResult) -> None:
        for condition in result.changes.opened:
            self._opened(condition)
        for condition in result.changes.held:
            if condition.level == CRITICAL and condition.incident_id is None:
                self._open_incident(condition)      # opened by a cycle that crashed before declaring
            elif condition.level == CRITICAL and self._reported_after_close(condition):
                self._open_incident(condition)      # a new signal after its incident was closed
            elif condition.level != CRITICAL:
                self._warn(condition)
        for condition in result.changes.cleared:
            log.info("condition %s cleared", condition.key)
            self._post(monitor_notices.all_clear(key=condition.key, since=condition.since,
                                                 cleared=condition.cleared_at or utcnow(), locale=self.locale),
                       f"all-clear for {condition.key}")
        if result.cycle % 1000 == 0:
            self.history.prune_samples()

    def _opened(self, condition: Condition) -> None:
        log.warning("condition %s (%s) opened: %s", condition.key, condition.level, condition.summary)
        if condition.level == CRITICAL:
            self._open_incident(condition)
        else:
            self._warn(condition)

    def _open_incident(self, condition: Condition) -> None:
        scenario = condition.scenario or "database_failure"
        if scenario in ONE_OPEN_INCIDENT:
            self._open_or_attach(condition, scenario)
            return
        incident = self.flows.declare(user_id=DETECTOR, scenario=scenario, severity="critical",
                                      summary=condition.summary[:300])
        incident_id = require_id(incident)
        self.history.link_incident(condition.key, incident_id)
        with self.store.session() as session:
            self._record_opened(session, condition, incident, scenario)
        self.flows.committed()
        log.warning("incident %s opened for condition %s", incident.key, condition.key)
        if self.section.auto_recovery.get(scenario, False):
            self.flows.submit(self.flows.auto_recover, incident_id)   # assessed without waiting for a claim

    def _open_or_attach(self, condition: Condition, scenario: str) -> None:
        """Find the open incident of ``scenario`` or declare it, and record the condition on it, in one
        transaction that is the only one doing so (PostgreSQL: an advisory transaction lock per scenario;
        SQLite: every session begins IMMEDIATE, the only writer): two conditions, two cycles or two
        replicas never declare two."""
        with self.store.session() as session:
            lock_scenario(session, scenario)
            already = session.exec(select(Incident).where(Incident.scenario == scenario, Incident.state != "closed")
                                   .order_by(col(Incident.id))).first()
            if already is None:
                incident = usecases.declare(session, scenario=scenario, severity="critical",
                                            summary=condition.summary[:300], declared_by=DETECTOR, locale=self.locale,
                                            stakeholder_channel=self.config.slack.stakeholder_channel)
                self._record_opened(session, condition, incident, scenario)
            else:
                incident = already
                self._record_attached(session, condition, incident)
        incident_id = require_id(incident)
        self.history.link_incident(condition.key, incident_id)   # a crash before it: the next cycle attaches
        self.flows.committed()
        if already is not None:
            log.warning("condition %s added to the open incident %s (no second %s incident)", condition.key,
                        incident.key, scenario)
            return
        log.warning("incident %s opened for condition %s", incident.key, condition.key)
        if self.section.auto_recovery.get(scenario, False):
            self.flows.submit(self.flows.auto_recover, incident_id)

    def _record_opened(self, session: Session, condition: Condition, incident: Incident, scenario: str) -> None:
        """The evidence that opened ``incident`` on its timeline, and the critical alert (through the outbox)."""
        incident_id = require_id(incident)
        svc.add_event(session, incident_id=incident_id, kind="audit", actor=DETECTOR,
                      text=monitor_notices.timeline_text(rule=condition.rule, summary=condition.summary,
                                                         evidence=condition.evidence, locale=self.locale),
                      data={"monitor_condition": condition.key, "rule": condition.rule,
                            "evidence": condition.evidence})
        svc.tell(session, incident_id=incident_id, kind=ALERT_KIND, version=incident.version,
                 key=condition.key, scenario=scenario, summary=condition.summary, evidence=condition.evidence)

    def _record_attached(self, session: Session, condition: Condition, incident: Incident) -> None:
        """``condition`` added to the open ``incident``: its timeline names the new source and evidence, and
        the incident channel and the ops channel say so (one outbox row each); nobody is paged again."""
        incident_id, source = require_id(incident), source_of(condition)
        svc.add_event(session, incident_id=incident_id, kind="audit", actor=DETECTOR,
                      text=monitor_notices.timeline_attached_text(rule=condition.rule, source=source,
                                                                  summary=condition.summary,
                                                                  evidence=condition.evidence, locale=self.locale),
                      data={"monitor_condition": condition.key, "rule": condition.rule, "source": source,
                            "attached": True, "evidence": condition.evidence})
        for to in ("channel", "ops"):
            svc.tell(session, incident_id=incident_id, kind=EVIDENCE_KIND, to=to, key=condition.key,
                     source=source, summary=condition.summary, evidence=condition.evidence)

    def _reported_after_close(self, condition: Condition) -> bool:
        """A held condition whose incident is closed, with a signal received after the closing: that is a
        new report (a canary still changed, or the same signal, is not)."""
        if condition.incident_id is None:
            return False
        with self.store.session() as session:
            incident = session.get(Incident, condition.incident_id)
        if incident is None or incident.state != "closed" or incident.closed_at is None:
            return False
        closed_at = incident.closed_at
        return any(_received_at(e) > closed_at for e in condition.evidence)

    def _warn(self, condition: Condition) -> None:
        repeat = timedelta(minutes=self.section.warning_repeat_minutes)
        if not self.history.claim_warning(condition.key, utcnow(), repeat):
            return
        self._post(monitor_notices.warning(key=condition.key, summary=condition.summary, since=condition.since,
                                           evidence=condition.evidence,
                                           repeat_minutes=self.section.warning_repeat_minutes, locale=self.locale),
                   f"warning for {condition.key}")

    def _post(self, message: Message, what: str) -> None:
        channel = self.config.slack.ops_channel
        try:
            self.gateway.post(channel, message.text, message.blocks)
        except SlackCallFailed as exc:
            log.error("could not post the %s to %s: %s", what, channel, exc)

