"""``/aegis backup run|list|verify``: who may, what is acked, where the work runs, where results go.

Decisions:
- **Who may** is policy's (``statemachines.policy.may_run_backup`` / ``may_read_backups``): ``backup
  run`` for the roster's incident commander, database lead or infrastructure lead; ``list`` and
  ``verify`` for anyone on the roster; with an empty roster nobody from Slack. A refusal says who may.
- **Ack.** Authorisation and the one-at-a-time check are in memory, so they happen in the ack: the
  user gets an ephemeral "started" (or the refusal) at once. No database, storage or backup work
  happens in the ack path.
- **Where it runs.** Backups and verifications run on one dedicated worker thread, never on the
  interaction pool, so a long backup cannot starve incident clicks. ``list`` is one quick query and
  runs on the interaction pool; it follows the catalog's listing rule (``recovery.backup.catalog.listing``:
  pruned backups and WAL segments hidden), as ``aegis backup list`` does without ``--all``/``--wal``.
- **A second run** while one is going (from Slack or the schedule, in this process) is refused
  with what is running and since when, rather than queued: a queued backup would start at a time
  nobody chose, and the result of the first tells whether a second is still needed. Scheduled runs
  wait for the gate instead of skipping their slot. Verifications queue behind a running backup.
- **Results** are posted in the channel where the command was typed (falling back to the
  command's response URL when the bot cannot post there). A failed run, or one that lost a target,
  is also posted to ``slack.ops_channel`` (``BackupDuty.run``) unless that is the same channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.backup_wiring import FRIENDLY_ERRORS, repository_from
from bot.bounded import BoundedPool, Busy, queue_limit
from bot.flows.backup import BackupDuty, object_view
from bot.flows.incident import reference
from bot.slack import commands
from bot.slack.replies import ephemeral
from messages.blocks import backup as backup_blocks
from messages.blocks import kit as block_kit
from messages.blocks.backup import BackupCheckView
from messages.views import Message
from recovery.backup.catalog import listing, previous_good, records_for
from recovery.backup.verify import verify
from recovery.redact import redact
from statemachines import policy

log = logging.getLogger("aegis.backup_slack")
Respond = Callable[..., object]
LIST_LIMIT = 30
BackupCommand = commands.BackupRun | commands.BackupList | commands.BackupVerify


class BackupDesk:
    def __init__(self, duty: BackupDuty) -> None:
        self.duty = duty
        self.locale = duty.locale
        self.roster = duty.config.roster
        # user-requested work only: a full queue refuses (Busy → "Aegis is busy") instead of growing
        self.worker = BoundedPool(1, queue_limit(10), thread_name_prefix="aegis-backup")

    # --- who may ---------------------------------------------------------------------------

    def may_run(self, user: str) -> bool:
        return policy.may_run_backup(user, roster=self.roster).allowed

    def may_read(self, user: str) -> bool:
        return policy.may_read_backups(user, roster=self.roster).allowed

    def _not_configured(self, kind: str) -> Message | None:
        """A run that could only fail (no storage, no such component) is refused before it starts."""
        config = self.duty.config
        if not config.storage:
            return block_kit.refusal("backup_no_storage", self.locale)
        parts = {"postgresql": config.components.postgres, "neo4j": config.components.neo4j,
                 "milvus": config.components.milvus}
        if not (any(parts.values()) if kind == "full" else parts[kind]):
            return block_kit.refusal("backup_component_missing", self.locale, kind=kind)
        return None

    # --- the ack path: in memory only --------------------------------------------------------

    def handle(self, parsed: BackupCommand, *, user: str, channel: str | None, respond: Respond,
               later: Callable[[Respond, Callable[[], None]], None]) -> Message | None:
        """Authorise and hand off the work; the returned message (if any) is the ephemeral ack."""
        if isinstance(parsed, commands.BackupRun):
            if not self.may_run(user):
                return block_kit.refusal("backup_run_not_allowed", self.locale, roles=list(policy.BACKUP_RUN_ROLES))
            missing = self._not_configured(parsed.kind)
            if missing:
                return missing
            what = f"backup run {parsed.kind}"
            if not self.duty.gate.try_enter(what):
                return block_kit.refusal("backup_busy", self.locale, what=self.duty.gate.holder or what,
                                      since=self.duty.gate.since)
            self._submit(respond, lambda: self._run(parsed.kind, user, channel, respond), release_gate=True)
            return backup_blocks.backup_started(parsed.kind, self.locale)
        if not self.may_read(user):
            return block_kit.refusal("backup_read_not_allowed", self.locale)
        if isinstance(parsed, commands.BackupList):
            later(respond, lambda: ephemeral(respond, self.listing()))
            return None
        self._submit(respond, lambda: self._verify(parsed.ident, channel, respond))
        return backup_blocks.backup_verify_started(parsed.ident, self.locale)

    def _submit(self, respond: Respond, work: Callable[[], None], *, release_gate: bool = False) -> None:
        def run() -> None:
            try:
                work()
            except FRIENDLY_ERRORS as exc:      # no storage, no key: say what to add, no stack trace
                ephemeral(respond, block_kit.refusal("backups_not_configured", self.locale,
                                                        detail=redact(str(exc))[:300]))
            except Exception:
                ref = reference()
                log.exception("backup command failed (reference %s)", ref)
                ephemeral(respond, block_kit.refusal("internal_error", self.locale, reference=ref))
            finally:
                if release_gate:
                    self.duty.gate.leave()

        try:
            self.worker.try_submit(run)
        except Busy:
            if release_gate:   # the run never starts, so it must not hold the one-at-a-time gate
                self.duty.gate.leave()
            raise

    # --- the work ----------------------------------------------------------------------------

    def _run(self, kind: str, user: str, channel: str | None, respond: Respond) -> None:
        view = self.duty.run(kind, started_by=user, report_channel=channel)
        self._publish(channel, respond, backup_blocks.backup_result(view, self.locale), f"result of {view.run_id}")

    def listing(self) -> Message:
        rows = listing(self.duty.store, limit=LIST_LIMIT)   # the catalog's rule, as `aegis backup list`
        return backup_blocks.backup_list([object_view(r) for r in rows], self.locale)

    def _verify(self, ident: str, channel: str | None, respond: Respond) -> None:
        records = records_for(self.duty.store, ident)
        if not records:
            ephemeral(respond, block_kit.usage_error("backup_not_found", self.locale, ident=ident))
            return
        checks = verify(repository_from(self.duty.config, self.duty.store), ident)
        views = [BackupCheckView(c.run_id, c.object_name, c.ok, [redact(p) for p in c.problems], c.reread)
                 for c in checks]
        goods = []
        for record, check in zip(records, checks, strict=True):
            good = None if check.ok else previous_good(self.duty.store, record)
            goods.append(object_view(good) if good else None)
        self._publish(channel, respond, backup_blocks.backup_verify_result(ident, views, goods, self.locale),
                      f"verification of {ident}")

    # --- replies -----------------------------------------------------------------------------

    def _publish(self, channel: str | None, respond: Respond, message: Message, what: str) -> None:
        """Post in the channel where the command was typed; the response URL when the bot can't."""
        if channel and self.duty.post(channel, message, what):
            return
        try:
            respond(text=message.text, blocks=message.blocks, response_type="in_channel", replace_original=False)
        except Exception:
            log.error("could not deliver the %s anywhere", what, exc_info=True)

    def shutdown(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
