"""Incident flows: the Slack-facing side of each user action, and what follows each committed change.

Each flow opens one transaction and runs the domain operation in it (``statemachines.usecases``:
it authorises through the policy, records the change and writes the outbox rows of what must be
told) → after commit, the outbox dispatcher is woken (bot/slack/outbox.py delivers to Slack) and the follow-up
work (assessment, the engine) is handed to a worker. No flow calls the Slack Web API: a request
thread can run a decision to its commit before it acks (bot/slack/app.py), and a crash or a Slack outage
delays a message but never loses it. Every follow-up is also found again from durable state by
``sweep`` (at start and periodically): an ``assembled`` incident is assessed, an ``assessed`` one
whose plan was rejected or failed is re-assessed, a ``recovering`` one is advanced.
Refusals and user mistakes raise the domain's ``Refused`` (a reason code and its template
context); ``explain`` turns it into the ephemeral reply.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot import wiring
from bot.bounded import BoundedPool, queue_limit
from bot.config import Config
from bot.flows import aftercare
from bot.prepare_ahead import PrepareAhead
from bot.presenters import incident_view, objective_report
from bot.slack import choice_forms
from bot.slack.gateway import SlackCallFailed, SlackGateway
from bot.slack.outbox import Dispatcher
from messages import render
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from messages.blocks import modals as modal_blocks
from messages.views import IncidentView, Message, ObjectiveReport
from recovery import planner
from recovery.engine import Engine
from recovery.health import run_checks
from recovery.redact import redact
from statemachines import service as svc
from statemachines import usecases
from statemachines.json_types import JsonObject
from statemachines.models import Incident, require_id, utcnow
from statemachines.service import Transition
from statemachines.store import Store
from statemachines.usecases import Refused

__all__ = ["Flows", "Refused", "reference"]   # Refused: the domain's refusal, which the Slack layer answers

log = logging.getLogger("aegis.flows")
T = TypeVar("T")
# test hook: seconds a follow-up (assessment, engine) waits before it starts, so a crash can land
# between a decision's commit and its follow-up
FOLLOW_UP_DELAY_ENV = "AEGIS_TEST_FOLLOW_UP_DELAY"


class Flows:
    def __init__(self, config: Config, store: Store, gateway: SlackGateway, *, owner: str,
                 workers: int = 8) -> None:
        self.config = config
        self.store = store
        self.gateway = gateway
        self.locale = config.locale
        # internal follow-up work: bounded, never dropped (waits, then runs in the caller; bot/bounded.py)
        self.pool = BoundedPool(workers, queue_limit(1000), thread_name_prefix="aegis-work")
        self._progress_guard = threading.Lock()
        self._last_plan_refresh: dict[int, float] = {}
        self.on_reminder_schedule: Callable[[int], None] = lambda _id: None
        self.on_reminder_cancel: Callable[[int], None] = lambda _id: None
        # its own gateway: few in-call retries, since the outbox retries a failed row with back-off
        self.outbox = Dispatcher(
            config, store, SlackGateway(gateway.token, gateway.base_url, attempts=2, backoff_seconds=0.2),
            owner=owner, on_room_opened=lambda incident_id: self.on_reminder_schedule(incident_id),
            lease_seconds=max(3 * config.engine.lease_seconds, 10.0))
        self.engine = Engine(
            store, lambda step, ctx: wiring.build_action(config, step, ctx, store=store), self, owner=owner,
            lease=timedelta(seconds=config.engine.lease_seconds),
        )
        # a waiting step's non-destructive part (a restore's staging), done before the approval arrives
        self.preparer = PrepareAhead(store, lambda step, ctx: wiring.build_action(config, step, ctx, store=store),
                                     self.submit, self.outbox.wake)
        self.follow_up_delay = float(os.environ.get(FOLLOW_UP_DELAY_ENV) or 0)
        # an approval is valid this long; the engine asks again for one that expired unused
        self.approval_ttl = timedelta(minutes=config.engine.approval_expiry_minutes)
        # every displayed time in the team's zone (config ``timezone``, default UTC)
        render.set_timezone(getattr(config, "timezone", "UTC"))

    # --- helpers -----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn`` on a worker; an exception is logged, never lost silently."""
        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background work %s failed", getattr(fn, "__name__", fn))
        self.pool.submit(run)

    def committed(self, transition: Transition | None = None) -> None:
        """After a commit: wake the outbox, and start what a transition asks for next."""
        self.outbox.wake()
        if transition is not None:
            self._follow_up(transition)
            self.submit(self.preparer.sync, transition.incident_id)   # a plan proposed, replaced, closed, …

    def _follow_up(self, transition: Transition) -> None:
        incident_id = transition.incident_id
        if transition.dest == "assembled":
            self.submit(self.assess, incident_id)
        elif transition.dest == "assessed" and transition.trigger == "assess":
            self.submit(lambda: self.auto_start(incident_id, transition.version))
        elif transition.dest == "assessed" and transition.trigger in ("abort_recovery", "verification_failed"):
            self.submit(lambda: self.assess(incident_id, after_version=transition.version))
        elif transition.dest == "verified":
            self.submit(self.propose_aftercare, incident_id)
        elif transition.dest == "closed":
            self.on_reminder_cancel(incident_id)

    def _slack(self, incident_id: int | None, what: str, call: Callable[[], T]) -> T | None:
        """Make a Slack call (reminders only); on failure record it on the timeline instead of losing it."""
        try:
            return call()
        except SlackCallFailed as exc:
            log.error("slack call for %s failed: %s", what, exc)
            if incident_id is not None:
                with self.store.session() as session:
                    svc.add_event(session, incident_id=incident_id, kind="slack_error", actor="aegis",
                                  text=f"could not {what}: {exc.error}",
                                  data={"code": "slack_error", "error": exc.error})
            return None

    def view(self, session: Session, incident: Incident, *, timeline: bool = False) -> IncidentView:
        return incident_view(session, incident, self.config, with_timeline=timeline)

    # --- declare -----------------------------------------------------------------------------

    def declare(self, *, user_id: str, scenario: str, severity: str, summary: str,
                request_key: str | None = None) -> Incident:
        """Declare an incident; a ``request_key`` seen before answers with the incident it declared."""
        try:
            with self.store.session() as session:
                incident = usecases.declare(session, scenario=scenario, severity=severity, summary=summary,
                                            declared_by=user_id, locale=self.locale,
                                            stakeholder_channel=self.config.slack.stakeholder_channel,
                                            request_key=request_key)
        except IntegrityError:
            # the same request, delivered twice at once, committed first on another thread or replica
            if request_key is None:
                raise
            with self.store.session() as session:
                earlier = svc.find_by_request(session, request_key)
            if earlier is None:
                raise
            return earlier
        self.committed()
        return incident

    # --- roles -------------------------------------------------------------------------------

    def claim_role(self, *, user_id: str, incident_id: int, role: str) -> None:
        with self.store.session() as session:
            transition = usecases.claim_role(session, incident_id=incident_id, role=role, user_id=user_id,
                                             roster=self.config.roster)
        self.committed(transition)

    # --- assessment --------------------------------------------------------------------------

    def assess(self, incident_id: int, *, after_version: int | None = None) -> None:
        """Health checks → classification → plan → ``assessed`` (C1). Read-only; safe to repeat.

        Without ``after_version`` this is the first assessment (state ``assembled``). With it, it is a
        re-assessment of an ``assessed`` incident, done only if nothing changed the incident since
        the abort/reject that asked for it — so a sweep or a second replica never re-plans twice.
        """
        self._wait_follow_up()
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
        if after_version is None and incident.state != "assembled":
            return
        if after_version is not None and (incident.state != "assessed" or incident.version != after_version):
            return
        plan, checks = self._plan(incident)
        with self.store.session() as session:
            transition = usecases.assess(session, incident_id=incident_id, expected_version=incident.version,
                                         strategy=plan.strategy, rationale=plan.rationale, steps=plan.steps,
                                         checks=checks, reason=plan.reason, reason_ctx=plan.reason_ctx)
        if transition is not None:   # None: someone else assessed first
            self.committed(transition)

    def _plan(self, incident: Incident) -> tuple[planner.Plan, list[JsonObject]]:
        """Health checks, then the planner on them and on what the responders chose (read-only)."""
        results = run_checks(wiring.component_specs(self.config) + wiring.service_specs(self.config))
        # ransomware: until the form gives the infection time, the detection time (the declaration)
        detected = incident.declared_at if incident.scenario == "ransomware" else None
        plan = planner.propose(wiring.facts(self.config, incident.scenario, results, store=self.store,
                                            options=dict(incident.recovery_options or {}),
                                            infection_time=detected))
        checks = [{"name": r.name, "kind": r.kind, "ok": r.ok, "detail": redact(r.detail)} for r in results]
        return plan, checks

    # --- recovery choices (issue 9): the strategy select, the infection time, the partial target ---

    def replan(self, incident_id: int, *, after_version: int) -> None:
        """Re-plan an ``assessed`` incident on its current ``recovery_options`` as a new revision.

        Done only if nothing moved the incident since the choice (``after_version``), and stored only
        if the options are still the ones planned with (``usecases.replan``): of two quick choices,
        the plan of the last one lands. Read-only until it stores; safe to repeat (the sweep does).
        """
        self._wait_follow_up()
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
        if incident.state != "assessed" or incident.version != after_version:
            return
        options: JsonObject = dict(incident.recovery_options or {})
        plan, checks = self._plan(incident)
        with self.store.session() as session:
            transition = usecases.replan(session, incident_id=incident_id, expected_version=after_version,
                                         options=options, strategy=plan.strategy, rationale=plan.rationale,
                                         steps=plan.steps, checks=checks, reason=plan.reason,
                                         reason_ctx=plan.reason_ctx)
        if transition is not None:
            self.committed(transition)

    def _choose(self, user_id: str, incident_id: int, changes: JsonObject,
                failure_at: datetime | None = None) -> str:
        """Store a choice (authorised by the use case), then re-plan on a worker; returns the key."""
        with self.store.session() as session:
            chosen = usecases.set_recovery_options(session, incident_id=incident_id, user_id=user_id,
                                                   roster=self.config.roster, changes=changes,
                                                   failure_at=failure_at)
            key = svc.get(session, incident_id).key or f"INC-{incident_id}"
        self.committed()
        self.submit(lambda: self.replan(incident_id, after_version=chosen.version))
        return key

    def zone(self) -> tzinfo:
        """The team's zone (config ``timezone``) the forms' dates and times are in."""
        return render.display_timezone()

    def wants_partial_form(self, incident_id: int, strategy: str) -> bool:
        """Choosing partial recovery with no partial target yet opens the form instead of re-planning."""
        with self.store.session() as session:
            options = svc.get(session, incident_id).recovery_options or {}
        return strategy == "partial_recovery" and not options.get("partial")

    def choose_strategy(self, *, user_id: str, incident_id: int, strategy: str) -> Message:
        key = self._choose(user_id, incident_id, {"strategy": strategy})
        return block_kit.simple_message(self.locale, "recovery_choice", "strategy", "recovery_choice",
                                        key=key, strategy=strategy)

    def infection_modal(self, *, user_id: str, incident_id: int) -> JsonObject:
        """The infection-time form (default: the time given before, else the detection time)."""
        with self.store.session() as session:
            incident = usecases.check_recovery_choice(session, incident_id=incident_id, user_id=user_id,
                                                      roster=self.config.roster)
            view = self.view(session, incident)
        date, time_of_day = choice_forms.form_defaults(incident.failure_at or incident.declared_at, self.zone())
        return modal_blocks.infection_time_modal(view, self.locale, date=date, time=time_of_day,
                                                 zone=self.config.timezone)

    def set_infection_time(self, *, user_id: str, incident_id: int, changes: JsonObject) -> Message:
        """Store the infection time (also the incident's ``failure_at``, the RPO baseline) and re-plan."""
        when = datetime.fromisoformat(str(changes["infection_time"]))
        key = self._choose(user_id, incident_id, changes, failure_at=when)
        return block_kit.simple_message(self.locale, "recovery_choice", "infection", "recovery_choice",
                                        key=key, when=when)

    def partial_modal(self, *, user_id: str, incident_id: int) -> JsonObject:
        """The partial-recovery form, prefilled with the target chosen before."""
        with self.store.session() as session:
            incident = usecases.check_recovery_choice(session, incident_id=incident_id, user_id=user_id,
                                                      roster=self.config.roster)
            view = self.view(session, incident)
        before = (incident.recovery_options or {}).get("partial") or {}
        current = {k: str(before[k]) for k in ("component", "database", "table", "collection") if before.get(k)}
        if before.get("target_time"):
            current["date"], current["time"] = choice_forms.form_defaults(
                datetime.fromisoformat(str(before["target_time"])), self.zone())
        return modal_blocks.partial_modal(view, self.locale, current=current, zone=self.config.timezone)

    def configured_components(self) -> frozenset[str]:
        """The components a partial recovery may name: those the config has."""
        components = self.config.components
        return frozenset(name for name in choice_forms.PARTIAL_COMPONENTS if getattr(components, name, None))

    def set_partial(self, *, user_id: str, incident_id: int, changes: JsonObject) -> Message:
        """Store the partial target with strategy ``partial_recovery`` and re-plan."""
        key = self._choose(user_id, incident_id, changes)
        return block_kit.simple_message(self.locale, "recovery_choice", "partial", "recovery_choice",
                                        key=key, what=choice_forms.describe(changes["partial"]))

    def advance(self, incident_id: int) -> None:
        """Run the steps that may run now (the engine); the follow-up of approvals, retries, verifications."""
        self._wait_follow_up()
        self.engine.advance(incident_id)

    def _wait_follow_up(self) -> None:
        if self.follow_up_delay:
            time.sleep(self.follow_up_delay)

    def explain(self, exc: Refused) -> Message:
        """The refusal's reply. A button of a replaced plan gets a link to the current plan: Slack is
        asked for it here (after the ack, on the interaction pool), never inside a decision."""
        ctx = dict(exc.ctx)
        if exc.link_of is not None:
            ctx["link"] = self.outbox.permalink(*exc.link_of)
        return block_kit.refusal(exc.reason, self.locale, **ctx)

    # --- automatic recovery (monitoring.auto_recovery: an incident the monitor opened) ---------

    def auto_recovery_on(self, incident: Incident) -> bool:
        """Whether Aegis recovers this incident by itself: the monitor declared it and the config turns
        automatic recovery on for its scenario."""
        return incident.declared_by == usecases.AEGIS and self.config.monitoring.auto_recovery.get(
            incident.scenario, False)

    def auto_recover(self, incident_id: int) -> None:
        """Assess at once, without waiting for an incident commander to take command (the monitor's
        incident has none); the assessment's follow-up then starts the recovery (``auto_start``)."""
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            if not self.auto_recovery_on(incident):
                return
            transition = usecases.auto_assemble(session, incident_id=incident_id,
                                                basis=f"monitoring.auto_recovery.{incident.scenario}")
        self.committed(transition)

    def auto_start(self, incident_id: int, version: int) -> None:
        """The first plan of an automatically recovered incident: pre-approve what the config lists
        (never a two-person step), start the recovery, run what may run (read-only, pre-approved)."""
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            if not self.auto_recovery_on(incident) or incident.plan_revision != 1:
                return
            transition = usecases.auto_start(
                session, incident_id=incident_id, expected_version=version,
                pre_approved=frozenset(self.config.monitoring.pre_approved_actions),
                scenario_basis=f"monitoring.auto_recovery.{incident.scenario}")
        self.committed(transition)
        if transition is not None:
            self.submit(self.advance, incident_id)

    # --- approvals ---------------------------------------------------------------------------

    def approve(self, *, user_id: str, step_id: int) -> None:
        with self.store.session() as session:
            approved = usecases.approve(session, step_id=step_id, user_id=user_id, roster=self.config.roster,
                                        approval_ttl=self.approval_ttl)
        self.committed(approved.transition)
        if not approved.satisfied:
            # the vote is recorded; a two-person step waits for its second approver
            raise Refused("second_approver_required", step_title=approved.step_title)
        self.submit(self.advance, approved.incident_id)

    def reject_modal(self, *, user_id: str, step_id: int) -> JsonObject:
        """The reason form that Reject opens; refused (nothing opens) when the click could not reject."""
        with self.store.session() as session:
            incident = usecases.check_reject(session, step_id=step_id, user_id=user_id, roster=self.config.roster)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return modal_blocks.reject_modal(view, step_view, self.locale)

    def reject(self, *, user_id: str, step_id: int, reason: str = "") -> None:
        with self.store.session() as session:
            rejected = usecases.reject(session, step_id=step_id, user_id=user_id, roster=self.config.roster,
                                       reason=reason)
        self.committed(rejected.transition)
        self.submit(self.preparer.sync, rejected.incident_id)   # the rejected step's preparation goes
        if rejected.transition is None:
            # reject in ``assessed``: re-plan unless someone else moved first
            self.submit(lambda: self.assess(rejected.incident_id, after_version=rejected.seen_version))
            # reject of an aftercare step: that plan is abandoned, so the clean-up may be due now
            self.submit(self.propose_aftercare, rejected.incident_id)

    def retry(self, *, user_id: str, step_id: int) -> None:
        with self.store.session() as session:
            incident_id = usecases.retry(session, step_id=step_id, user_id=user_id, roster=self.config.roster,
                                         approval_ttl=self.approval_ttl)
        self.committed()
        self.submit(self.advance, incident_id)

    def abort(self, *, user_id: str, step_id: int) -> None:
        with self.store.session() as session:
            transition = usecases.abort(session, step_id=step_id, user_id=user_id, roster=self.config.roster)
            incident_id = svc.get_step(session, step_id).incident_id
        self.committed(transition)
        if transition is None:   # an aftercare plan abandoned: the clean-up may be due now
            self.submit(self.propose_aftercare, incident_id)

    # --- manual verification -----------------------------------------------------------------

    def verify_modal(self, *, user_id: str, step_id: int) -> JsonObject:
        """The evidence form for a step waiting for manual verification (authorised users only)."""
        with self.store.session() as session:
            incident, _decision = usecases.check_verification(session, step_id=step_id, user_id=user_id,
                                                              roster=self.config.roster)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return modal_blocks.verify_modal(view, step_view, self.locale)

    def verify_manually(self, *, user_id: str, step_id: int, evidence: str) -> None:
        """Record "verified manually by @user: <evidence>"; the engine then marks the incident verified."""
        statement = redact(evidence.strip())[:2000]
        if not statement:
            raise Refused("evidence_required")
        with self.store.session() as session:
            incident_id = usecases.verify_manually(session, step_id=step_id, user_id=user_id,
                                                   roster=self.config.roster, statement=statement)
        self.committed()
        self.submit(self.advance, incident_id)

    # --- close -------------------------------------------------------------------------------

    def close_modal(self, *, user_id: str, incident_id: int) -> JsonObject:
        with self.store.session() as session:
            incident = usecases.check_close(session, incident_id=incident_id, user_id=user_id)
            return modal_blocks.close_modal(self.view(session, incident), self.locale)

    def close(self, *, user_id: str, incident_id: int, summary: str) -> None:
        with self.store.session() as session:
            transition = usecases.close(session, incident_id=incident_id, user_id=user_id, summary=summary)
            aftercare.propose_due(self.config, session, incident_id)
        self.committed(transition)

    def propose_aftercare(self, incident_id: int) -> None:
        """The aftercare plan due now (bot/flows/aftercare.py: re-protect after a verified failover, the
        clean-up once closed and the re-protect settled), waiting for approval."""
        if aftercare.propose(self.config, self.store, incident_id):
            self.committed()

    # --- the engine's listener interface: its transactions wrote the outbox rows --------------

    def transitioned(self, transition: Transition) -> None:
        self.committed(transition)

    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        if event == "aftercare_done":   # a re-protect finished: the clean-up may be due now
            self.submit(self.propose_aftercare, incident_id)
        if event != "progress":
            self.outbox.wake()
            return
        # progress lines re-render the plan at most once a second
        now = time.monotonic()
        with self._progress_guard:
            if now - self._last_plan_refresh.get(incident_id, 0) < 1.0:
                return
            self._last_plan_refresh[incident_id] = now
        with self.store.session() as session:
            svc.tell(session, incident_id=incident_id, kind="plan", step_id=step_id, event="progress")
        self.outbox.wake()

    def objective_report(self, incident: Incident) -> ObjectiveReport:
        with self.store.session() as session:
            return objective_report(session, incident, self.config)

    def _post_thread(self, incident: Incident, message: Message, what: str) -> None:
        self._slack(incident.id, what, lambda: self.gateway.post(
            incident.stakeholder_channel or "", message.text, message.blocks, thread_ts=incident.stakeholder_ts))

    # --- reminders and queries ---------------------------------------------------------------

    def remind(self, incident_id: int) -> bool:
        interval = timedelta(minutes=self.config.slack.reminder_minutes)
        with self.store.session() as session:
            if not svc.claim_reminder(session, incident_id=incident_id, not_before=utcnow() - interval / 2):
                return False
            incident = svc.get(session, incident_id)
            view = self.view(session, incident)
        open_seconds = (utcnow() - incident.declared_at).total_seconds()
        message = incident_blocks.reminder(view, open_seconds, self.locale)
        if incident.stakeholder_channel:
            self._post_thread(incident, message, "post a reminder")
        return True

    def status(self, *, key: str | None, channel_id: str | None) -> Message:
        with self.store.session() as session:
            incident = svc.find_by_key(session, key) if key else (
                svc.find_by_channel(session, channel_id) if channel_id else None)
            if incident is None:
                if key:
                    return block_kit.usage_error("incident_not_found", self.locale, key=key)
                return block_kit.usage_error("no_incident_here", self.locale)
            return incident_blocks.status_reply(self.view(session, incident), self.locale)

    def list_open(self) -> Message:
        with self.store.session() as session:
            views = [self.view(session, i) for i in svc.open_incidents(session)]
        return incident_blocks.incident_list(views, self.locale)

    # --- crash recovery ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Finish what a crash or a lost worker left, from durable state alone: interrupted steps,
        an unassessed ``assembled`` incident, an ``assessed`` one whose plan was rejected or failed
        (re-assessed once: ``assess`` compares the version) or whose responders' choice has no plan
        yet (``replan``), a ``recovering`` one to advance, and the aftercare of a ``verified`` or
        closed incident: the plan due now (``aftercare.propose_due``), an approved step to run."""
        self.engine.resume_interrupted()   # its transactions wrote their outbox rows
        self.outbox.wake()
        with self.store.session() as session:
            stalled = [(require_id(i), i.state, i.version, self._needs_replan(session, i),
                        self.auto_recovery_on(i) and i.plan_revision <= 1, self._choice_pending(session, i))
                       for i in svc.open_incidents(session)]
        for incident_id, *_rest in stalled:   # steps waiting since before a restart: prepared again (or reused)
            self.submit(self.preparer.sync, incident_id)
        for incident_id, state, version, replan, auto, chosen in stalled:
            if state == "assessed" and chosen:
                self.replan(incident_id, after_version=version)   # a choice stored, then a crash before its plan
            elif state == "detected" and auto:
                self.auto_recover(incident_id)          # declared, then a crash before Aegis assembled it
            elif state == "assessed" and auto and not replan:
                self.auto_start(incident_id, version)   # assessed, then a crash before the recovery started
            elif state == "assembled":
                self.assess(incident_id)
            elif state == "assessed" and replan:
                self.assess(incident_id, after_version=version)
            elif state == "recovering":
                self.advance(incident_id)
            elif state == "verified":
                self.propose_aftercare(incident_id)   # a crash between verify and the proposal
                self.advance(incident_id)             # an approved aftercare step not run yet
        with self.store.session() as session:
            closed = aftercare.pending_ids(session)
        for incident_id in closed:   # closed, aftercare not over: a plan now due, an approved step not run
            self.propose_aftercare(incident_id)
            self.advance(incident_id)

    @staticmethod
    def _choice_pending(session: Session, incident: Incident) -> bool:
        """An assessed incident whose newest plan-making event is a stored choice, not a plan: the
        re-plan it asked for has not landed (a crash, or a lost worker)."""
        if incident.state != "assessed":
            return False
        for event in reversed(svc.timeline(session, require_id(incident))):
            data = event.data or {}
            if data.get("code") == "recovery_options_set":
                return True
            if event.kind == "transition" and data.get("trigger") in ("assess", "reassess"):
                return False
        return False

    @staticmethod
    def _needs_replan(session: Session, incident: Incident) -> bool:
        """An assessed plan with a rejected or failed step: a reject or an abort asked for a new one."""
        return incident.state == "assessed" and any(
            s.status in ("rejected", "failed") for s in svc.current_steps(session, require_id(incident)))


def reference() -> str:
    """An opaque id for an internal error, shown to the user and logged with the traceback."""
    return uuid.uuid4().hex[:8]

