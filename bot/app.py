"""The Slack surface: a Bolt app whose handlers ack at once and hand the work to ``Flows``.

Every handler acks before doing any I/O (Slack's 3-second rule) and hands the rest to a small
interaction pool, so the request thread answers Slack at once (``process_before_response=True``:
no polling for the ack) and the after-ack work — database, Slack calls — never competes with the
threads that are acking (see bench/ack_latency.py). Bolt verifies every request's signature and
timestamp (401 otherwise). All errors end in one place, ``guarded``: a ``Refused`` becomes an ephemeral explanation, an
unexpected exception an ephemeral "nothing was changed, reference X" plus a logged traceback.
``/aegis backup …`` goes to ``BackupDesk`` (bot/backup_slack.py), which runs backups on a worker of
its own so that a long backup never holds one of the interaction threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App
from slack_sdk import WebClient

from bot import commands
from bot.backup_slack import BackupDesk
from bot.config import SCENARIOS, SEVERITIES
from bot.flows import Flows, Refused, reference
from messages import blocks
from messages.views import Message
from statemachines import service as svc
from statemachines.machine import IllegalTransition
from statemachines.service import StaleVersion

log = logging.getLogger("aegis.app")
Respond = Callable[..., Any]


def _ephemeral(respond: Respond | None, message: Message) -> None:
    if respond is None:
        return
    try:
        respond(text=message.text, blocks=message.blocks, response_type="ephemeral", replace_original=False)
    except Exception:
        log.warning("could not send an ephemeral reply", exc_info=True)


def create_app(flows: Flows, *, token: str, signing_secret: str, api_url: str, backups: BackupDesk) -> App:
    locale = flows.locale
    app = App(
        client=WebClient(token=token, base_url=api_url),
        signing_secret=signing_secret,
        token_verification_enabled=False,      # no auth.test at start: the bot must boot during a Slack outage
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )
    # Two threads: enough to keep up with people clicking, few enough that acks keep the CPU they need.
    interactions = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aegis-interaction")

    def later(respond: Respond | None, work: Callable[[], None]) -> None:
        """Run ``work`` after the ack, off the request thread."""
        interactions.submit(guarded, respond, work)

    def guarded(respond: Respond | None, work: Callable[[], None]) -> None:
        try:
            work()
        except Refused as exc:
            _ephemeral(respond, blocks.refusal(exc.reason, locale, **exc.ctx))
        except IllegalTransition as exc:
            _ephemeral(respond, blocks.refusal("wrong_state", locale, action=exc.trigger, state=exc.state))
        except StaleVersion:
            # someone else changed the incident in the same instant; their change stands
            _ephemeral(respond, blocks.refusal("changed_meanwhile", locale))
        except Exception:
            ref = reference()
            log.exception("handler failed (reference %s)", ref)
            _ephemeral(respond, blocks.refusal("internal_error", locale, reference=ref))

    # --- /aegis ------------------------------------------------------------------------------

    @app.command("/aegis")
    def aegis_command(ack: Any, command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        parsed = commands.parse(command.get("text", ""))
        if isinstance(parsed, commands.Help):
            message = blocks.help_text(locale)
            ack(text=message.text, blocks=message.blocks, response_type="ephemeral")
            return
        if isinstance(parsed, commands.Usage):
            message = blocks.usage_error(parsed.problem, locale, **parsed.ctx)
            ack(text=message.text, blocks=message.blocks, response_type="ephemeral")
            return
        user = command["user_id"]
        if isinstance(parsed, commands.BackupRun | commands.BackupList | commands.BackupVerify):
            reply = backups.handle(parsed, user=user, channel=command.get("channel_id"), respond=respond, later=later)
            if reply is None:
                ack()
            else:
                ack(text=reply.text, blocks=reply.blocks, response_type="ephemeral")
            return
        ack()

        def work() -> None:
            if isinstance(parsed, commands.OpenDeclareForm):
                flows.gateway.open_view(command["trigger_id"], blocks.declare_modal(locale))
            elif isinstance(parsed, commands.Declare):
                incident = flows.declare(user_id=user, scenario=parsed.scenario, severity=parsed.severity,
                                         summary=parsed.summary)
                _ephemeral(respond, blocks.declared_ack(incident.key or "", locale))
            elif isinstance(parsed, commands.Status):
                _ephemeral(respond, flows.status(key=parsed.key, channel_id=command.get("channel_id")))
            elif isinstance(parsed, commands.ListOpen):
                _ephemeral(respond, flows.list_open())

        later(respond, work)

    # --- buttons -----------------------------------------------------------------------------

    def button(action_id: str, handler: Callable[[str, str, dict[str, Any]], None]) -> None:
        @app.action(action_id)
        def _on_click(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
            ack()
            user = body["user"]["id"]
            later(respond, lambda: handler(user, str(action.get("value", "")), body))

    def step_id(value: str) -> int:
        if not value.isdigit():
            raise Refused("unknown_step")
        return int(value)

    def incident_of(body: dict[str, Any]) -> int:
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        with flows.store.session() as session:
            incident = svc.find_by_channel(session, channel) if channel else None
        if incident is None:
            raise Refused("no_incident_here")
        return incident.id or 0

    button("aegis_claim_role", lambda u, v, b: flows.claim_role(user_id=u, incident_id=incident_of(b), role=v))
    button("aegis_approve", lambda u, v, b: flows.approve(user_id=u, step_id=step_id(v)))
    button("aegis_reject", lambda u, v, b: flows.reject(user_id=u, step_id=step_id(v)))
    button("aegis_retry", lambda u, v, b: flows.retry(user_id=u, step_id=step_id(v)))
    button("aegis_abort", lambda u, v, b: flows.abort(user_id=u, step_id=step_id(v)))

    def open_close(user: str, value: str, body: dict[str, Any]) -> None:
        incident_id = int(value) if value.isdigit() else incident_of(body)
        flows.gateway.open_view(body["trigger_id"], flows.close_modal(user_id=user, incident_id=incident_id))

    button("aegis_close", open_close)

    # --- modals ------------------------------------------------------------------------------

    def field(view: dict[str, Any], block: str) -> str:
        item = view.get("state", {}).get("values", {}).get(block, {}).get("value", {})
        if item.get("selected_option"):
            return str(item["selected_option"].get("value", ""))
        return str(item.get("value") or "").strip()

    @app.view("aegis_declare")
    def declare_submitted(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        scenario, severity, summary = field(view, "scenario"), field(view, "severity"), field(view, "summary")
        errors = {}
        if scenario not in SCENARIOS:
            errors["scenario"] = blocks.usage_error("unknown_scenario", locale, value=scenario).text[:150]
        if severity not in SEVERITIES:
            errors["severity"] = blocks.usage_error("unknown_severity", locale, value=severity).text[:150]
        if not summary:
            errors["summary"] = blocks.usage_error("missing_summary", locale).text[:150]
        if errors:
            ack(response_action="errors", errors=errors)
            return
        ack()
        user = body["user"]["id"]
        later(None, lambda: flows.declare(user_id=user, scenario=scenario, severity=severity,
                                          summary=summary[:1000]))

    @app.view("aegis_close_submit")
    def close_submitted(ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        summary = field(view, "summary")
        metadata = str(view.get("private_metadata", ""))
        if not summary:
            ack(response_action="errors", errors={"summary": blocks.usage_error("missing_summary", locale).text[:150]})
            return
        if not metadata.isdigit():
            ack(response_action="errors", errors={"summary": blocks.refusal("no_incident_here", locale).text[:150]})
            return
        ack()
        user = body["user"]["id"]

        def work() -> None:
            try:
                flows.close(user_id=user, incident_id=int(metadata), summary=summary[:3000])
            except Refused as exc:
                message = blocks.refusal(exc.reason, locale, **exc.ctx)
                with flows.store.session() as session:
                    incident = svc.get(session, int(metadata))
                if incident.channel_id:
                    flows.gateway.ephemeral(incident.channel_id, user, message.text, message.blocks)

        later(None, work)

    return app
