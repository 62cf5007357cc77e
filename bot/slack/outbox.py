"""The outbox dispatcher: delivers to Slack what committed changes wrote in the ``outbox`` table.

Mechanism 1 (issue 8). The transaction that moves an incident or a step also writes outbox rows
(``statemachines.service.tell``); nothing else talks to Slack about an incident's messages. One
``Dispatcher`` thread per process:

- claims an incident's pending rows with a lease (``claimed_by``/``claimed_until``), holding the
  incident row ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite's single writer serialises) while it
  claims, so two replicas never hold rows of one incident at once and never deliver a row twice;
- builds the incident's view **once per batch**, renders with ``messages`` and delivers the rows in
  order; several refreshes of one message in a batch (card, plan, stakeholder post) are one update;
- on a failed call, stops that incident's batch (order is kept), records the first failure as a
  ``slack_error`` timeline event, and retries the row with back-off — across Slack outages and
  restarts (a row claimed by a process that died is taken over once its lease lapses). A Slack
  error that retrying cannot fix (``invalid_blocks``, ``channel_not_found``, …) is given up after
  ``PERMANENT_ATTEMPTS`` tries and stays on the timeline.
- creates an incident's channel once: the name is recorded on the ``open_room`` row before
  ``conversations.create``, and a retry (after a crash that lost Slack's answer) adopts the channel
  of that name instead of making ``inc-7-x-2``.

Ephemeral answers to the person who clicked are not outbox rows: they go through ``respond()``
(the response URL, valid 30 minutes) from the interaction pool, because they report on a change
that is already committed and visible in the channel messages, which are the outbox's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from bot.config import Config
from bot.presenters import incident_view, objective_report
from bot.slack.gateway import TRANSIENT, SlackCallFailed, SlackGateway
from messages import monitor_notices
from messages.blocks import incident as incident_blocks
from messages.views import IncidentView, Message, ReplacedView, StepView, TransitionView
from statemachines import policy
from statemachines import service as svc
from statemachines.models import Incident, OutboxRow, require_id, utcnow
from statemachines.store import Store

log = logging.getLogger("aegis.outbox")

BATCH = 50                   # rows of one incident delivered per claim
FIRST_BACKOFF = 1.0          # seconds before the first retry; doubles per failure
MAX_BACKOFF = 10.0           # a Slack outage is retried at least this often once it is over
PERMANENT_ATTEMPTS = 5       # tries of a row Slack refuses for a reason retrying cannot fix
POLL_SECONDS = 1.0           # rows of other replicas and due retries are found at least this often
ROOM_NAME_ATTEMPTS = 19      # inc-7-x, inc-7-x-2, … inc-7-x-19 before a taken name is given up
# test hook: seconds the dispatcher waits after claiming, before delivering (a crash can land there)
DELAY_ENV = "AEGIS_TEST_DISPATCH_DELAY"


def backoff(attempts: int) -> float:
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(attempts - 1, 0)))


def retryable(exc: Exception) -> bool:
    """Worth retrying without limit: a network failure (an exception name) or a transient Slack error."""
    if not isinstance(exc, SlackCallFailed):
        return False
    return exc.error in TRANSIENT or not exc.error.islower()


# --- claiming and settling rows ----------------------------------------------------------------

def pending_incidents(session: Session, *, owner: str, now: datetime) -> list[int]:
    """Incidents with an undone row that is due and not held by a live lease of another process."""
    rows = session.exec(
        select(OutboxRow.incident_id).where(
            col(OutboxRow.done_at).is_(None), col(OutboxRow.next_try_at) <= now,
            (col(OutboxRow.claimed_until).is_(None)) | (col(OutboxRow.claimed_until) < now)
            | (col(OutboxRow.claimed_by) == owner))
        .order_by(col(OutboxRow.id)).limit(500)
    )
    return list(dict.fromkeys(int(r) for r in rows))


def claim(session: Session, *, incident_id: int, owner: str, lease: timedelta) -> list[OutboxRow]:
    """Claim the incident's undone rows, oldest first; [] when another process holds them or the
    oldest waits for its retry (the rows behind it wait too: order per incident is kept)."""
    now = utcnow()
    held = session.exec(
        select(Incident.id).where(col(Incident.id) == incident_id).with_for_update(skip_locked=True)
    ).first()
    if held is None:
        return []   # another dispatcher (or a decision) holds the incident right now: next round
    rows = list(session.exec(
        select(OutboxRow).where(OutboxRow.incident_id == incident_id, col(OutboxRow.done_at).is_(None))
        .order_by(col(OutboxRow.id)).limit(BATCH).execution_options(populate_existing=True)
    ))
    if not rows or rows[0].next_try_at > now:
        return []
    if any(r.claimed_by not in (None, owner) and r.claimed_until is not None and r.claimed_until > now
           for r in rows):
        return []
    session.execute(update(OutboxRow).where(col(OutboxRow.id).in_([r.id for r in rows]))
                    .values(claimed_by=owner, claimed_until=now + lease))
    return rows


def settle_done(session: Session, *, ids: list[int], owner: str, lease: timedelta, incident_id: int) -> None:
    """Mark rows delivered, and renew the lease on the rest of this batch."""
    now = utcnow()
    session.execute(update(OutboxRow).where(col(OutboxRow.id).in_(ids), col(OutboxRow.claimed_by) == owner)
                    .values(done_at=now))
    session.execute(update(OutboxRow).where(col(OutboxRow.incident_id) == incident_id,
                                            col(OutboxRow.claimed_by) == owner, col(OutboxRow.done_at).is_(None))
                    .values(claimed_until=now + lease))


def settle_failed(session: Session, *, row: OutboxRow, owner: str, error: str, give_up: bool) -> None:
    """Count the failure, schedule the retry, and release this process's hold on the incident's rows."""
    now = utcnow()
    attempts = row.attempts + 1
    values: dict[str, object] = {"attempts": attempts, "last_error": error[:500],
                              "next_try_at": now + timedelta(seconds=backoff(attempts))}
    if give_up:
        values["done_at"] = now
    session.execute(update(OutboxRow).where(col(OutboxRow.id) == row.id).values(**values))
    session.execute(update(OutboxRow).where(col(OutboxRow.incident_id) == row.incident_id,
                                            col(OutboxRow.claimed_by) == owner, col(OutboxRow.done_at).is_(None))
                    .values(claimed_by=None, claimed_until=None))


# --- delivering one incident's batch -------------------------------------------------------------

@dataclasses.dataclass
class Batch:
    """One incident's rows and what delivering them needs: the view, built once."""

    incident: Incident
    view: IncidentView
    closing: Message | None = None     # the closing report, rendered once for the channel and the thread


WHAT = {   # the timeline's words for a failed delivery ("could not …")
    "open_room": "create the incident channel", "card": "post the incident card",
    "stakeholder_root": "start the stakeholder thread", "stakeholder_update": "post a stakeholder update",
    "assessment": "post the assessment", "plan_new": "post the plan", "plan": "update the plan",
    "plan_replaced": "mark the old plan as replaced", "step_result": "post a step result",
    "reapproval": "post a step result", "manual_verification": "ask for a manual verification",
    "rejection": "post the rejection", "closing_report": "post the closing report",
    "closing_report_stakeholders": "post the closing report to stakeholders",
    "monitor_alert": "post the monitor's critical alert", "aftercare_done": "post that an aftercare plan is done",
    "step_prepared": "post that a step was prepared ahead of its approval",
    "monitor_evidence": "post the monitor's added evidence",
}


class Dispatcher:
    def __init__(self, config: Config, store: Store, gateway: SlackGateway, *, owner: str,
                 on_room_opened: Callable[[int], None] = lambda _id: None, lease_seconds: float = 30.0) -> None:
        self.config = config
        self.store = store
        self.gateway = gateway
        self.owner = owner
        self.locale = config.locale
        self.on_room_opened = on_room_opened
        self.lease = timedelta(seconds=lease_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delay = float(os.environ.get(DELAY_ENV) or 0)
        self._handlers: dict[str, Callable[[Batch, OutboxRow], None]] = {
            "open_room": self._open_room, "card": self._card, "stakeholder_root": self._stakeholder_root,
            "stakeholder_update": self._stakeholder_update, "assessment": self._assessment,
            "plan_new": self._plan_new, "plan": self._plan, "plan_replaced": self._plan_replaced,
            "step_result": self._step_post, "reapproval": self._step_post, "step_prepared": self._step_prepared,
            "manual_verification": self._manual_verification, "rejection": self._rejection,
            "closing_report": self._closing_report, "closing_report_stakeholders": self._closing_report_thread,
            "monitor_alert": self._monitor_alert, "aftercare_done": self._aftercare_done,
            "monitor_evidence": self._monitor_evidence,
        }

    # --- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="aegis-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        """A change committed: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.run_once()
            except Exception:
                log.exception("outbox round failed; retrying in %ss", POLL_SECONDS)
                busy = False
            if not busy:
                self._wake.wait(POLL_SECONDS)

    def run_once(self) -> bool:
        """Deliver what is due for every incident; True when some row was delivered."""
        with self.store.session() as session:
            incidents = pending_incidents(session, owner=self.owner, now=utcnow())
        delivered = False
        for incident_id in incidents:
            if self._stop.is_set():
                break
            delivered = self._deliver_incident(incident_id) or delivered
        return delivered

    def _deliver_incident(self, incident_id: int) -> bool:
        with self.store.session() as session:
            rows = claim(session, incident_id=incident_id, owner=self.owner, lease=self.lease)
        if not rows:
            return False
        if self.delay:
            time.sleep(self.delay)
        batch = self._batch(incident_id)
        last_of = {row.kind: row.id for row in rows if row.kind in svc.REFRESH_KINDS}
        coalesced: list[int] = []
        for row in rows:
            if row.kind in svc.REFRESH_KINDS and last_of[row.kind] != row.id:
                coalesced.append(require_id(row))   # a later row of this batch re-renders the same message
                continue
            try:
                self._handle(batch, row)
            except Exception as exc:
                self._failed(row, exc)
                return True
            with self.store.session() as session:
                settle_done(session, ids=[*coalesced, require_id(row)], owner=self.owner, lease=self.lease,
                            incident_id=incident_id)
            coalesced = []
        return True

    def _batch(self, incident_id: int) -> Batch:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            view = incident_view(session, incident, self.config)
        return Batch(incident, view)

    def _handle(self, batch: Batch, row: OutboxRow) -> None:
        handler = self._handlers.get(row.kind)
        if handler is None:
            log.error("outbox row %s has an unknown kind %r; dropped", row.id, row.kind)
            return
        handler(batch, row)

    def _failed(self, row: OutboxRow, exc: Exception) -> None:
        error = exc.error if isinstance(exc, SlackCallFailed) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, SlackCallFailed):
            log.error("delivering outbox row %s (%s) failed", row.id, row.kind, exc_info=exc)
        give_up = not retryable(exc) and row.attempts + 1 >= PERMANENT_ATTEMPTS
        what = WHAT.get(row.kind, row.kind)
        log.warning("could not %s for incident %s (attempt %d): %s%s", what, row.incident_id, row.attempts + 1,
                    error, "; giving up" if give_up else "; will retry")
        with self.store.session() as session:
            settle_failed(session, row=row, owner=self.owner, error=error, give_up=give_up)
            if row.attempts == 0 or give_up:
                # the first failure (and a final one) is visible on the timeline; retries are in the log
                svc.add_event(session, incident_id=row.incident_id, kind="slack_error", actor="aegis",
                              text=f"could not {what}: {error}",
                              data={"code": "slack_error", "error": error, "outbox_id": row.id,
                                    "gave_up": give_up})

    # --- the kinds -------------------------------------------------------------------------------

    def _set(self, batch: Batch, **values: object) -> None:
        """Store a message reference (channel, ts) at once: a retry must not post it a second time."""
        with self.store.session() as session:
            svc.set_fields(session, incident_id=require_id(batch.incident), **values)
        for key, value in values.items():
            setattr(batch.incident, key, value)

    def _open_room(self, batch: Batch, row: OutboxRow) -> None:
        """Channel (once: its id is stored before anything else), invites, reminders (R1, P1)."""
        incident = batch.incident
        if not incident.channel_id:
            self._set(batch, channel_id=self._create_room(incident, row))
            batch.view = dataclasses.replace(batch.view, channel_id=incident.channel_id)
        self.gateway.invite(incident.channel_id or "", self._team(incident))
        self.on_room_opened(require_id(incident))

    def _room_name(self, incident: Incident, attempt: int) -> str:
        base = f"{self.config.slack.incident_channel_prefix}-{incident.id}-{incident.scenario.replace('_', '-')}"
        return base if attempt == 1 else f"{base}-{attempt}"

    def _create_room(self, incident: Incident, row: OutboxRow) -> str:
        """The incident's channel, created once even when the process dies between Slack's answer to
        ``conversations.create`` and storing the channel id: the name about to be created is
        recorded on the row (committed) before each call, and a later try of the row first looks
        that name up (a channel of that name the bot is in) and adopts it. A name someone else took
        is skipped: name-2, name-3, …"""
        payload = row.payload or {}
        intended, attempt = payload.get("room_name"), int(payload.get("room_attempt") or 1)
        if isinstance(intended, str) and intended:
            found = self.gateway.find_channel(intended)
            if found is not None:
                log.info("incident %s: adopted #%s (%s), created by an earlier try", incident.id, intended, found)
                return found
        for n in range(attempt, ROOM_NAME_ATTEMPTS + 1):
            name = self._room_name(incident, n)
            self._record_room_intent(row, name, n)
            try:
                return self.gateway.create_channel(name)
            except SlackCallFailed as exc:
                if exc.error != "name_taken":
                    raise
        raise SlackCallFailed("conversations.create", "name_taken")

    def _record_room_intent(self, row: OutboxRow, name: str, attempt: int) -> None:
        row.payload = {**(row.payload or {}), "room_name": name, "room_attempt": attempt}
        with self.store.session() as session:
            session.execute(update(OutboxRow).where(col(OutboxRow.id) == row.id).values(payload=row.payload))

    def _team(self, incident: Incident) -> list[str]:
        users = [incident.declared_by] if incident.declared_by.startswith("U") else []
        return list(dict.fromkeys(users + self.config.response_team(incident.scenario)))

    def _card(self, batch: Batch, row: OutboxRow) -> None:
        self._post_or_update(batch, batch.incident.channel_id, "card_ts",
                             incident_blocks.incident_card(batch.view, self.locale))

    def _stakeholder_root(self, batch: Batch, row: OutboxRow) -> None:
        self._post_or_update(batch, batch.incident.stakeholder_channel, "stakeholder_ts",
                             incident_blocks.stakeholder_root(batch.view, self.locale))

    def _post_or_update(self, batch: Batch, channel: str | None, ts_field: str, message: Message) -> None:
        """A message that always shows the current state: posted once (its ts stored), then updated."""
        if not channel:
            return
        ts = getattr(batch.incident, ts_field)
        if ts:
            self.gateway.update(channel, ts, message.text, message.blocks)
        else:
            self._set(batch, **{ts_field: self.gateway.post(channel, message.text, message.blocks)})

    def _thread_post(self, batch: Batch, message: Message) -> None:
        incident = batch.incident
        if incident.stakeholder_channel:
            self.gateway.post(incident.stakeholder_channel, message.text, message.blocks,
                              thread_ts=incident.stakeholder_ts)

    def _stakeholder_update(self, batch: Batch, row: OutboxRow) -> None:
        p = row.payload or {}
        at = datetime.fromisoformat(str(p.get("at"))) if p.get("at") else row.created_at
        t = TransitionView(str(p.get("source")), str(p.get("dest")), p.get("actor"), str(p.get("reason") or ""),
                           at, str(p.get("trigger") or ""))
        self._thread_post(batch, incident_blocks.stakeholder_update(batch.view, t, self.locale))

    def _channel_post(self, batch: Batch, message: Message) -> str | None:
        channel = batch.incident.channel_id
        return self.gateway.post(channel, message.text, message.blocks) if channel else None

    def _assessment(self, batch: Batch, row: OutboxRow) -> None:
        # the planner's reason code + params (usecases.assess), worded per locale; a row written before
        # they were stored falls back to the timeline's English rationale
        p = row.payload or {}
        reason, ctx = str(p.get("reason") or ""), p.get("reason_ctx")
        self._channel_post(batch, incident_blocks.assessment(
            batch.view, self.locale, batch.incident.recovery_options or {},
            rationale="" if reason else self._rationale(batch.incident), reason=reason,
            reason_ctx=ctx if isinstance(ctx, dict) else None))

    def _rationale(self, incident: Incident) -> str:
        """Why the planner chose the current strategy (its assess/reassess transition's reason): a
        responder's choice it could not honour says so there."""
        with self.store.session() as session:
            events = svc.timeline(session, require_id(incident))
        reason = next((e.text for e in reversed(events) if e.kind == "transition"
                       and (e.data or {}).get("trigger") in ("assess", "reassess")), "")
        prefix = f"{incident.strategy}: "
        return reason[len(prefix):] if incident.strategy and reason.startswith(prefix) else reason

    def _plan_new(self, batch: Batch, row: OutboxRow) -> None:
        """A new plan revision: its own message; the previous one is retired by a row of its own."""
        incident = batch.incident
        old_ts = incident.plan_ts
        ts = self._channel_post(batch, incident_blocks.plan_message(batch.view, self.locale))
        if ts is None:
            return
        with self.store.session() as session:
            svc.set_fields(session, incident_id=require_id(incident), plan_ts=ts)
            if old_ts and old_ts != ts:
                # plan_ts named the previous revision's message: retire its buttons (next in order)
                svc.tell(session, incident_id=require_id(incident), kind="plan_replaced", old_ts=old_ts, new_ts=ts,
                         old_revision=batch.view.plan_revision - 1, new_revision=batch.view.plan_revision)
        incident.plan_ts = ts

    def _plan(self, batch: Batch, row: OutboxRow) -> None:
        incident = batch.incident
        if not (incident.channel_id and incident.plan_ts):
            return
        if self._new_revision_pending(require_id(incident)):
            # plan_ts still names the previous revision's message while the view is already the new
            # revision's: updating it would put the new plan's buttons on the old message. The new
            # plan gets its own message (plan_new) and the old one is retired (plan_replaced).
            return
        message = incident_blocks.plan_message(batch.view, self.locale)
        self.gateway.update(incident.channel_id, incident.plan_ts, message.text, message.blocks)

    def _new_revision_pending(self, incident_id: int) -> bool:
        with self.store.session() as session:
            return session.exec(select(OutboxRow.id).where(
                OutboxRow.incident_id == incident_id, OutboxRow.kind == "plan_new",
                col(OutboxRow.done_at).is_(None)).limit(1)).first() is not None

    def _plan_replaced(self, batch: Batch, row: OutboxRow) -> None:
        p = row.payload or {}
        incident = batch.incident
        with self.store.session() as session:
            old_view = incident_view(session, svc.get(session, require_id(incident)), self.config,
                                     revision=int(p["old_revision"]))
        replaced = ReplacedView(int(p["old_revision"]), int(p["new_revision"]),
                                self.permalink(incident.channel_id, str(p["new_ts"])))
        message = incident_blocks.plan_replaced(old_view, replaced, self.locale)
        self.gateway.update(incident.channel_id or "", str(p["old_ts"]), message.text, message.blocks)

    def permalink(self, channel_id: str | None, ts: str | None) -> str | None:
        """The message's permalink (``chat.getPermalink``); None when Slack cannot say."""
        if not channel_id or not ts:
            return None
        try:
            return str(self.gateway.call("chat.getPermalink", channel=channel_id, message_ts=ts)["permalink"])
        except (SlackCallFailed, KeyError):
            return None

    def _step_view(self, batch: Batch, row: OutboxRow) -> tuple[IncidentView, StepView | None]:
        """The row's step and the view it is shown in: the batch's, or — when a re-plan committed
        after the step's result (a failed verification) — the view of the step's own revision."""
        step_id = int((row.payload or {}).get("step_id") or 0)
        found = next((s for s in batch.view.steps if s.id == step_id), None)
        if found is not None:
            return batch.view, found
        with self.store.session() as session:
            try:
                revision = svc.get_step(session, step_id).revision
            except svc.NotFound:
                return batch.view, None
            view = incident_view(session, svc.get(session, require_id(batch.incident)), self.config, revision=revision)
        view = dataclasses.replace(view, channel_id=batch.incident.channel_id)
        return view, next((s for s in view.steps if s.id == step_id), None)

    def _step_post(self, batch: Batch, row: OutboxRow) -> None:
        view, step = self._step_view(batch, row)
        if step is None:
            return
        message = (incident_blocks.reapproval_request(view, step, self.locale) if row.kind == "reapproval"
                   else incident_blocks.step_result(view, step, self.locale))
        self._channel_post(batch, message)

    def _step_prepared(self, batch: Batch, row: OutboxRow) -> None:
        """A waiting step was prepared ahead of its approval (bot/prepare_ahead.py): one line in the channel."""
        view, step = self._step_view(batch, row)
        if step is not None:
            self._channel_post(batch, incident_blocks.step_prepared(view, step, dict(row.payload or {}), self.locale))

    def _manual_verification(self, batch: Batch, row: OutboxRow) -> None:
        view, step = self._step_view(batch, row)
        if step is None or view is not batch.view:
            return   # replaced by a new plan revision since: nothing to verify on the old one
        with self.store.session() as session:
            steps = svc.current_steps(session, require_id(batch.incident))
            plan_roles = [r for s in steps for r in s.approver_roles or []]
        roles = policy.verification_roles(list(step.approver_roles or []), plan_roles)
        self._channel_post(batch, incident_blocks.manual_verification_request(batch.view, step, roles, self.locale))

    def _rejection(self, batch: Batch, row: OutboxRow) -> None:
        """The rejection and its reason, in the incident channel for everyone to see."""
        p = row.payload or {}
        step_id = int(p.get("step_id") or 0)
        with self.store.session() as session:
            incident = svc.get(session, require_id(batch.incident))
            # the rejected step's own revision: a re-plan may already have replaced it
            view = incident_view(session, incident, self.config, revision=svc.get_step(session, step_id).revision)
        step = next((s for s in view.steps if s.id == step_id), None)
        if step is not None:
            self._channel_post(batch, incident_blocks.step_rejected(view, step, str(p.get("user") or ""),
                                                           str(p.get("reason") or ""), self.locale))

    def _closing(self, batch: Batch) -> Message:
        if batch.closing is None:
            with self.store.session() as session:
                incident = svc.get(session, require_id(batch.incident))
                batch.closing = incident_blocks.closing_report(
                    incident_view(session, incident, self.config, with_timeline=True),
                    objective_report(session, incident, self.config), self.locale)
        return batch.closing

    def _closing_report(self, batch: Batch, row: OutboxRow) -> None:
        self._channel_post(batch, self._closing(batch))

    def _closing_report_thread(self, batch: Batch, row: OutboxRow) -> None:
        self._thread_post(batch, self._closing(batch))

    def _aftercare_done(self, batch: Batch, row: OutboxRow) -> None:
        """An aftercare plan (re-protect, clean-up) finished: say so in the incident channel."""
        kind = str((row.payload or {}).get("aftercare") or "")
        self._channel_post(batch, incident_blocks.aftercare_done(batch.view, kind, self.locale))

    def _monitor_evidence(self, batch: Batch, row: OutboxRow) -> None:
        """A second CRITICAL condition added to this open incident (bot/jobs/monitor.py), told where the
        row says: ``to`` is ``channel`` (the incident's) or ``ops`` (one row each, so a retry repeats neither)."""
        payload = row.payload or {}
        evidence = payload.get("evidence")
        message = monitor_notices.evidence_attached(
            key=str(payload.get("key", "")), scenario=batch.incident.scenario, source=str(payload.get("source", "")),
            summary=str(payload.get("summary", "")),
            evidence=[e for e in evidence if isinstance(e, dict)] if isinstance(evidence, list) else [],
            incident_key=batch.incident.key or "", locale=self.locale)
        if payload.get("to") == "ops":
            self.gateway.post(self.config.slack.ops_channel, message.text, message.blocks)
        else:
            self._channel_post(batch, message)

    def _monitor_alert(self, batch: Batch, row: OutboxRow) -> None:
        """The ops channel's critical alert for an incident the monitor opened (bot/jobs/monitor.py)."""
        payload = row.payload or {}
        evidence = payload.get("evidence")
        message = monitor_notices.critical_alert(
            key=str(payload.get("key", "")), scenario=batch.incident.scenario, summary=str(payload.get("summary", "")),
            evidence=[e for e in evidence if isinstance(e, dict)] if isinstance(evidence, list) else [],
            incident_key=batch.incident.key or "", invited=len(self.config.response_team(batch.incident.scenario)),
            locale=self.locale)
        self.gateway.post(self.config.slack.ops_channel, message.text, message.blocks)
