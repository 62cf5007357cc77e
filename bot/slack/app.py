"""The Slack surface: a Bolt app whose handlers authorise and commit, then ack; Slack is told later.

Nothing acknowledged is lost (issue 8, Mechanism 1b): a handler that changes something (claim,
approve, retry, abort, declare, and the reject/verify/close forms) runs the decision to its commit on
the request thread *before* it acks — a few milliseconds of SQL inside Slack's 3-second budget — so
a crash right after the HTTP 200 cannot lose the vote or the claim. The decision's transaction wrote
what must be told as outbox rows (bot/slack/outbox.py delivers them), and its follow-ups (assessment, the
engine) are found again from durable state by the sweeper. No Web API call runs before the ack: the
clicker's ephemeral answer (``respond()``, or ``chat.postEphemeral`` for a form) is rendered and sent
by one reply thread (bot/slack/replies.py); the forms' ``views.open`` and read-only commands (status,
list) run after the ack on a small interaction pool.
Requests reach Bolt only through the front door (bot/slack/server.py), which has checked the signature on
the raw bytes and parsed the body. All errors end in one place, ``answer_for``: a ``Refused``
becomes an ephemeral explanation, an unexpected exception an ephemeral "nothing was changed,
reference X" plus a logged traceback.
``/aegis backup …`` goes to ``BackupDesk`` (bot/slack/backup_desk.py), which runs backups on a worker of
its own so that a long backup never holds one of the interaction threads.

Values Slack sends are not trusted beyond their signature: a payload without a user or a pressed
button is refused by the ``refuse_malformed`` middleware before any handler runs; step and incident
ids are bounded digit strings; and a button acts only on the incident of the channel it was
pressed in (``step_in_channel``, ``incident_in_channel``), whatever its value says. The interaction
queue is bounded: when it is full a user's new work is refused with "Aegis is busy".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack import Ack
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient

from bot.bounded import BoundedPool, Busy, queue_limit
from bot.flows.incident import Flows, Refused, reference
from bot.reads import Reads
from bot.slack import choice_forms, commands
from bot.slack.backup_desk import BackupDesk
from bot.slack.drill_desk import DrillDesk
from bot.slack.gateway import SlackCallFailed
from bot.slack.replies import ReplySender, ephemeral
from messages.blocks import kit as block_kit
from messages.blocks import modals as modal_blocks
from messages.views import Message
from statemachines import service as svc
from statemachines.json_types import JsonObject
from statemachines.machine import IllegalTransition
from statemachines.models import Incident, require_id, utcnow
from statemachines.service import StaleVersion
from statemachines.vocabulary import SCENARIOS, SEVERITIES

log = logging.getLogger("aegis.app")
Respond = Callable[..., object]
_ID = re.compile(r"[0-9]{1,18}")          # database ids: digits only, and they fit in a 64-bit integer
EXPIRED_TRIGGER = {"expired_trigger_id", "invalid_trigger_id", "trigger_exchanged"}


def parse_id(value: object) -> int | None:
    """A database id from a button value or private_metadata; None unless it is 1–18 ASCII digits."""
    return int(value) if isinstance(value, str) and _ID.fullmatch(value) else None


def malformed(body: JsonObject) -> str | None:
    """Why an authenticated payload cannot be handled (a refusal key), or None when it can."""
    kind = body.get("type")
    if kind == "block_actions":
        user = body.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
            return "who_unknown"
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict) \
                or not isinstance(actions[0].get("action_id"), str):
            return "no_action"
    elif kind in ("view_submission", "view_closed"):
        user = body.get("user")
        if not isinstance(body.get("view"), dict) or not isinstance(user, dict) or not isinstance(user.get("id"), str):
            return "bad_view"
    elif "command" in body:
        if not isinstance(body.get("user_id"), str) or not body["user_id"]:
            return "who_unknown"
    return None


def field(view: JsonObject, block: str) -> str:
    """One input's value from ``view.state.values``; "" for anything missing or not shaped like Slack's."""
    return choice_forms.picked(view, block)


def create_app(flows: Flows, *, token: str, signing_secret: str, api_url: str, backups: BackupDesk,
               drills: DrillDesk | None = None, reports: Callable[[str], Message] | None = None) -> App:
    if not signing_secret:
        raise ValueError("create_app needs the real signing secret; there is no default")
    locale = flows.locale
    reads = Reads(flows.store)   # the checks before a decision never wait for SQLite's write lock

    def single_workspace(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
        # Bolt's default single-team authorization calls auth.test on the first request and fails
        # every request while Slack's API is unreachable; the bot token is known, so no call is needed
        # and clicks are still acked (and recorded) during a Slack outage.
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=token)

    app = App(
        client=WebClient(token=token, base_url=api_url),
        signing_secret=signing_secret,
        authorize=single_workspace,
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )
    # Two threads: enough to keep up with people clicking, few enough that acks keep the CPU they need.
    # Bounded: past the queue, new user work is refused ("busy") rather than piling up (bot/bounded.py).
    interactions = BoundedPool(2, queue_limit(100), thread_name_prefix="aegis-interaction")
    # the answers of committed decisions: never on a request thread, never refused (bot/slack/replies.py)
    replies = ReplySender()
    busy = block_kit.refusal("busy", locale)

    def later(respond: Respond | None, work: Callable[[], None]) -> None:
        """Run ``work`` after the ack, off the request thread; ``Busy`` when the queue is full."""
        interactions.try_submit(guarded, respond, work)

    def answer_for(exc: Exception) -> Message:
        """What to tell the user about a failed action (may ask Slack for a link: call it after the ack)."""
        if isinstance(exc, Refused):
            return flows.explain(exc)
        if isinstance(exc, IllegalTransition):
            return block_kit.refusal("wrong_state", locale, action=exc.trigger, state=exc.state)
        if isinstance(exc, StaleVersion):
            # someone else changed the incident in the same instant; their change stands
            return block_kit.refusal("changed_meanwhile", locale)
        if isinstance(exc, svc.NotFound):
            # a message older than the database (a restore) names an incident or step it no longer has
            return block_kit.refusal("incident_gone", locale)
        ref = reference()
        log.error("handler failed (reference %s)", ref, exc_info=exc)
        return block_kit.refusal("internal_error", locale, reference=ref)

    def guarded(respond: Respond | None, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:
            ephemeral(respond, answer_for(exc))

    def decide(work: Callable[[], Message | None]) -> Callable[[], Message | None]:
        """Run a decision now, on the request thread, to its commit (before the ack); return what to
        tell the user, to be rendered and sent after the ack."""
        try:
            result = work()
        except Exception as exc:
            failure = exc
            return lambda: answer_for(failure)
        return lambda: result

    def request_key(kind: str, value: object) -> str | None:
        """The Slack request's own id (a command's ``trigger_id``, a form's view id) as ``kind:id``."""
        return f"{kind}:{value}" if isinstance(value, str) and value else None

    def declare(user: str, scenario: str, severity: str, summary: str, request: str | None) -> Message:
        """Declare, and the declarer's confirmation naming whom the roster invites (nobody: how to add one).
        ``request`` names the Slack request: the same request again gets the same incident and answer."""
        key = flows.declare(user_id=user, scenario=scenario, severity=severity, summary=summary,
                            request_key=request).key or ""
        invited = [u for u in flows.config.response_team(scenario) if u != user]
        return modal_blocks.declared_ack(key, locale, scenario=scenario, invited=invited)

    def reply_later(respond: Respond | None, answer: Callable[[], Message | None]) -> None:
        """Render and send a committed decision's answer after the ack, on the reply thread."""
        replies.send(lambda message: ephemeral(respond, message), answer)

    def private_reply(user: str, channel: str | None) -> Respond:
        """A ``respond`` for view submissions (which have no response URL): an ephemeral in ``channel``,
        else a direct message to the user."""
        def reply(*, text: str, blocks: list[JsonObject] | None = None, **_: object) -> None:
            if channel:
                try:
                    flows.gateway.ephemeral(channel, user, text, blocks)
                    return
                except SlackCallFailed as exc:
                    log.warning("could not reply in %s (%s); sending a direct message", channel, exc.error)
            flows.gateway.post(user, text, blocks)
        return reply

    def open_form(trigger_id: object, view: JsonObject, what: str) -> None:
        """``views.open``; a trigger Slack no longer accepts (3 s, used once) becomes "press again"."""
        if not isinstance(trigger_id, str) or not trigger_id:
            raise Refused("form_expired", what=what)
        try:
            flows.gateway.open_view(trigger_id, view)
        except SlackCallFailed as exc:
            if exc.error in EXPIRED_TRIGGER:
                raise Refused("form_expired", what=what) from None
            raise Refused("form_failed", error=exc.error) from None

    class RefuseMalformed(Middleware):
        """Before any listener: Bolt computes every listener argument up front (``body["actions"][0]``
        included), so a payload without a user or a button must be answered here."""

        def process(self, *, req: BoltRequest, resp: BoltResponse,
                    next: Callable[[], BoltResponse]) -> BoltResponse:  # noqa: A002 (Bolt's name)
            problem = malformed(req.body)
            if problem is None:
                return next()
            log.warning("refused a malformed %s payload: %s", req.body.get("type") or "command", problem)
            if problem == "bad_view":
                return BoltResponse(status=400, body="bad request: the view submission has no view or user")
            respond = req.context.respond
            if respond is not None:
                try:
                    later(respond, lambda: ephemeral(respond, block_kit.refusal(problem, locale)))
                except Busy:
                    ephemeral(respond, busy)
            return BoltResponse(status=200, body="")

    app.use(RefuseMalformed())

    # --- /aegis ------------------------------------------------------------------------------

    @app.command("/aegis")
    def aegis_command(ack: Ack, command: JsonObject, respond: Respond, client: WebClient) -> None:
        parsed = commands.parse(str(command.get("text") or ""))
        if isinstance(parsed, commands.Help):
            message = block_kit.help_text(locale)
            ack(text=message.text, blocks=message.blocks, response_type="ephemeral")
            return
        if isinstance(parsed, commands.Usage):
            message = block_kit.usage_error(parsed.problem, locale, **parsed.ctx)
            ack(text=message.text, blocks=message.blocks, response_type="ephemeral")
            return
        user = command["user_id"]
        channel = command.get("channel_id") if isinstance(command.get("channel_id"), str) else None
        if isinstance(parsed, commands.Report) and reports is not None:
            # a signed link is an HMAC in memory: the ack carries it (bot/reports/web.py)
            link = reports(user)
            ack(text=link.text, blocks=link.blocks, response_type="ephemeral")
            return
        if isinstance(parsed, commands.DrillRun | commands.DrillList) and drills is not None:
            try:
                drill_reply = drills.handle(parsed, user=user, respond=respond, later=later)
            except Busy:
                drill_reply = busy
            if drill_reply is None:
                ack()
            else:
                ack(text=drill_reply.text, blocks=drill_reply.blocks, response_type="ephemeral")
            return
        if isinstance(parsed, commands.BackupRun | commands.BackupList | commands.BackupVerify):
            try:
                reply = backups.handle(parsed, user=user, channel=channel, respond=respond, later=later)
            except Busy:
                reply = busy
            if reply is None:
                ack()
            else:
                ack(text=reply.text, blocks=reply.blocks, response_type="ephemeral")
            return

        if isinstance(parsed, commands.Declare):
            request = request_key("command", command.get("trigger_id"))
            answer = decide(lambda: declare(user, parsed.scenario, parsed.severity, parsed.summary, request))
            declared = answer()   # a declaration's answers never call Slack: the ack carries them
            if declared is None:
                ack()
            else:
                ack(text=declared.text, blocks=declared.blocks, response_type="ephemeral")
            return

        def work() -> None:
            if isinstance(parsed, commands.OpenDeclareForm):
                form = modal_blocks.declare_modal(locale)
                form["private_metadata"] = channel or ""   # where to confirm the declaration
                open_form(command.get("trigger_id"), form, "declare")
            elif isinstance(parsed, commands.Status):
                ephemeral(respond, flows.status(key=parsed.key, channel_id=channel))
            elif isinstance(parsed, commands.ListOpen):
                ephemeral(respond, flows.list_open())

        try:
            later(respond, work)
        except Busy:
            ack(text=busy.text, blocks=busy.blocks, response_type="ephemeral")
            return
        ack()

    # --- buttons -----------------------------------------------------------------------------

    def decision(action_id: str, handler: Callable[[str, str, JsonObject], None]) -> None:
        """A button that changes something: decided and committed before the ack (nothing acked is lost)."""
        @app.action(action_id)
        def _on_click(ack: Ack, body: JsonObject, action: JsonObject, respond: Respond) -> None:
            user = body["user"]["id"]   # refuse_malformed has checked the shape
            value = action.get("value")
            answer = decide(lambda: handler(user, value if isinstance(value, str) else "", body))
            ack()
            reply_later(respond, answer)

    def button(action_id: str, handler: Callable[[str, str, JsonObject], None]) -> None:
        """A button that opens a form (``views.open``): acked at once, the form opened after the ack."""
        @app.action(action_id)
        def _on_click(ack: Ack, body: JsonObject, action: JsonObject, respond: Respond) -> None:
            ack()
            user = body["user"]["id"]   # refuse_malformed has checked the shape
            value = action.get("value")
            try:
                later(respond, lambda: handler(user, value if isinstance(value, str) else "", body))
            except Busy:
                ephemeral(respond, busy)

    def channel_of(body: JsonObject) -> str | None:
        channel, container = body.get("channel"), body.get("container")
        found = ((channel.get("id") if isinstance(channel, dict) else None)
                 or (container.get("channel_id") if isinstance(container, dict) else None))
        return found if isinstance(found, str) and found else None

    def incident_of(body: JsonObject) -> int:
        channel = channel_of(body)
        incident_id = reads.channel_incident(channel) if channel else None
        if incident_id is None:
            raise Refused("no_incident_here")
        return incident_id

    def refuse_foreign(user: str, here: int, what: str) -> None:
        """A button of another incident pressed in this incident's channel: audit it, change nothing."""
        with flows.store.session() as session:
            svc.add_event(session, incident_id=here, kind="audit", actor=user,
                          text=f"refused: {what} of another incident pressed in this channel")
        raise Refused("other_incident")

    def step_in_channel(user: str, value: str, body: JsonObject) -> int:
        """The step id in a button's value, refused unless the step belongs to this channel's incident."""
        step = parse_id(value)
        if step is None:
            raise Refused("unknown_step")
        here = incident_of(body)
        owner = reads.step_incident(step)
        if owner is None:
            raise Refused("unknown_step")
        if owner != here:
            refuse_foreign(user, here, "a step button")
        return step

    def incident_in_channel(user: str, value: str, body: JsonObject) -> int:
        """The incident a Close button names (else this channel's), refused unless it is this channel's."""
        here = incident_of(body)
        named = parse_id(value)
        if not value or named == here:
            return here
        if named is None:
            raise Refused("incident_gone")
        if not reads.incident_exists(named):
            raise Refused("incident_gone")
        refuse_foreign(user, here, "a Close button")
        return here

    decision("aegis_claim_role", lambda u, v, b: flows.claim_role(user_id=u, incident_id=incident_of(b), role=v))
    decision("aegis_approve", lambda u, v, b: flows.approve(user_id=u, step_id=step_in_channel(u, v, b)))
    def open_reject(user: str, value: str, body: JsonObject) -> None:
        # Reject asks for a reason first; the form's submission rejects (aegis_reject_submit)
        step = step_in_channel(user, value, body)
        open_form(body.get("trigger_id"), flows.reject_modal(user_id=user, step_id=step), "reject")

    button("aegis_reject", open_reject)
    decision("aegis_retry", lambda u, v, b: flows.retry(user_id=u, step_id=step_in_channel(u, v, b)))
    decision("aegis_abort", lambda u, v, b: flows.abort(user_id=u, step_id=step_in_channel(u, v, b)))

    def open_close(user: str, value: str, body: JsonObject) -> None:
        incident_id = incident_in_channel(user, value, body)
        open_form(body.get("trigger_id"), flows.close_modal(user_id=user, incident_id=incident_id), "close")

    button("aegis_close", open_close)

    def open_verify(user: str, value: str, body: JsonObject) -> None:
        # manual verification: the form asks for the evidence (aegis_verify_submit records it)
        step = step_in_channel(user, value, body)
        open_form(body.get("trigger_id"), flows.verify_modal(user_id=user, step_id=step), "verify")

    button("aegis_verify_manual", open_verify)

    # --- recovery choices (issue 9): the strategy select and the two forms on the assessment ---

    @app.action(block_kit.STRATEGY)
    def strategy_chosen(ack: Ack, body: JsonObject, action: JsonObject, respond: Respond) -> None:
        """A strategy picked: decided before the ack — unless it is partial recovery with no target
        yet, which opens the partial form instead (after the ack)."""
        user = body["user"]["id"]
        option = action.get("selected_option")
        strategy = str(option.get("value") or "") if isinstance(option, dict) else ""
        form_for: list[int] = []

        def choose() -> Message | None:
            incident_id = incident_of(body)
            if flows.wants_partial_form(incident_id, strategy):
                form_for.append(incident_id)
                return None
            return flows.choose_strategy(user_id=user, incident_id=incident_id, strategy=strategy)

        answer = decide(choose)
        ack()
        if not form_for:
            reply_later(respond, answer)
            return
        try:
            later(respond, lambda: open_form(body.get("trigger_id"),
                                             flows.partial_modal(user_id=user, incident_id=form_for[0]), "partial"))
        except Busy:
            ephemeral(respond, busy)

    def open_infection(user: str, value: str, body: JsonObject) -> None:
        incident_id = incident_in_channel(user, value, body)
        open_form(body.get("trigger_id"), flows.infection_modal(user_id=user, incident_id=incident_id), "infection")

    def open_partial(user: str, value: str, body: JsonObject) -> None:
        incident_id = incident_in_channel(user, value, body)
        open_form(body.get("trigger_id"), flows.partial_modal(user_id=user, incident_id=incident_id), "partial")

    button(block_kit.SET_INFECTION_TIME, open_infection)
    button(block_kit.SET_PARTIAL_TARGET, open_partial)

    def form_incident(view: JsonObject) -> Incident | None:
        """The incident a modal was opened for (its id in ``private_metadata``); None when it is gone."""
        incident_id = parse_id(view.get("private_metadata"))
        if incident_id is None:
            return None
        with flows.store.session() as session:
            try:
                return svc.get(session, incident_id)
            except svc.NotFound:
                return None

    def choice_form(ack: Ack, body: JsonObject, view: JsonObject, name: str, first_block: str,
                    parse: Callable[[Incident], choice_forms.Parsed],
                    store: Callable[[str, int, JsonObject], Message]) -> None:
        """A recovery-choice form (the incident id in ``private_metadata``): bad input keeps the form
        open with its errors and stores nothing; a good one is decided before the ack."""
        incident = form_incident(view)
        if incident is None:
            ack(**form_error(first_block, block_kit.refusal("incident_gone", locale)))
            return
        parsed = parse(incident)
        if parsed.value is None:
            ack(response_action="errors", errors=modal_blocks.form_errors(
                locale, name, parsed.errors, declared_at=incident.declared_at,
                component=choice_forms.picked(view, "component")))
            return
        user = body["user"]["id"]
        found, value = require_id(incident), parsed.value
        answer = decide(lambda: store(user, found, value))
        ack()
        reply_later(private_reply(user, incident.channel_id), answer)

    @app.view(block_kit.INFECTION_CALLBACK)
    def infection_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        choice_form(ack, body, view, "infection_modal", "date",
                    lambda incident: choice_forms.infection_time(view, zone=flows.zone(),
                                                                 declared_at=incident.declared_at, now=utcnow()),
                    lambda user, incident_id, changes: flows.set_infection_time(
                        user_id=user, incident_id=incident_id, changes=changes))

    @app.view(block_kit.PARTIAL_CALLBACK)
    def partial_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        choice_form(ack, body, view, "partial_modal", "component",
                    lambda _incident: choice_forms.partial_target(view, zone=flows.zone(),
                                                                  configured=flows.configured_components(),
                                                                  now=utcnow()),
                    lambda user, incident_id, changes: flows.set_partial(
                        user_id=user, incident_id=incident_id, changes=changes))

    # --- modals ------------------------------------------------------------------------------

    def form_error(block: str, message: Message) -> JsonObject:
        return {"response_action": "errors", "errors": {block: message.text[:150]}}

    @app.view("aegis_declare")
    def declare_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        scenario, severity, summary = field(view, "scenario"), field(view, "severity"), field(view, "summary")
        errors = {}
        if scenario not in SCENARIOS:
            errors["scenario"] = block_kit.usage_error("unknown_scenario", locale, value=scenario).text[:150]
        if severity not in SEVERITIES:
            errors["severity"] = block_kit.usage_error("unknown_severity", locale, value=severity).text[:150]
        if not summary:
            errors["summary"] = block_kit.usage_error("missing_summary", locale).text[:150]
        if errors:
            ack(response_action="errors", errors=errors)
            return
        user = body["user"]["id"]
        metadata = view.get("private_metadata")
        reply = private_reply(user, metadata if isinstance(metadata, str) and metadata else None)

        # the same confirmation as the slash command, where the form was opened (or as a DM)
        request = request_key("view", view.get("id"))
        answer = decide(lambda: declare(user, scenario, severity, summary[:1000], request))
        ack()
        reply_later(reply, answer)

    @app.view("aegis_close_submit")
    def close_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        summary = field(view, "summary")
        if not summary:
            ack(**form_error("summary", block_kit.usage_error("missing_summary", locale)))
            return
        # One primary-key read before the ack: only the ack can keep the form open with the reason.
        incident = form_incident(view)
        if incident is None:
            ack(**form_error("summary", block_kit.refusal("incident_gone", locale)))
            return
        user = body["user"]["id"]
        answer = decide(lambda: flows.close(user_id=user, incident_id=require_id(incident), summary=summary[:3000]))
        ack()
        reply_later(private_reply(user, incident.channel_id), answer)

    def step_form(ack: Ack, body: JsonObject, view: JsonObject, block: str, missing: str,
                  run: Callable[[str, int, str], None]) -> None:
        """A form about one plan step (its id in ``private_metadata``): validate, decide, ack, answer later."""
        text = field(view, block)
        step_id = parse_id(view.get("private_metadata"))
        if not text:
            ack(**form_error(block, block_kit.refusal(missing, locale)))
            return
        channel = None
        if step_id is not None:
            with flows.store.session() as session:
                try:
                    channel = svc.get(session, svc.get_step(session, step_id).incident_id).channel_id
                except svc.NotFound:
                    step_id = None
        if step_id is None:
            ack(**form_error(block, block_kit.refusal("incident_gone", locale)))
            return
        user = body["user"]["id"]
        answer = decide(lambda: run(user, step_id or 0, text))
        ack()
        reply_later(private_reply(user, channel), answer)

    @app.view("aegis_reject_submit")
    def reject_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        step_form(ack, body, view, "reason", "reject_reason_missing",
                  lambda user, step, reason: flows.reject(user_id=user, step_id=step, reason=reason[:1000]))

    @app.view("aegis_verify_submit")
    def verify_submitted(ack: Ack, body: JsonObject, view: JsonObject) -> None:
        step_form(ack, body, view, "evidence", "evidence_required",
                  lambda user, step, evidence: flows.verify_manually(user_id=user, step_id=step,
                                                                     evidence=evidence[:2000]))

    return app
