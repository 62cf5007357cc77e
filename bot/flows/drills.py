"""Drills for the CLI, Slack and the schedule: the context from config, the runs and their result posts.

- ``drill_context`` resolves the config into the domain's ``DrillContext`` (targets, key, scratch
  settings, objectives, Neo4j/Milvus sources and how to drop their scratch copies, services' drill URLs).
- ``DrillDuty.run`` runs one drill (one at a time per process), then posts the result to
  ``slack.ops_channel`` — figures, pass/fail per objective, the report location — and one notice per
  backup that failed its restore test.
- The schedules and their job functions are in bot/jobs/drills.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.backup_wiring import repository_from, sources_from
from bot.config import Config
from bot.run_gate import RunGate
from recovery.backup.runner import BackupRunner, Neo4jSource
from recovery.drills.context import DrillContext, DrillSettings, Say, ServiceProbe
from recovery.drills.drills import DrillOutcome, run_drill
from recovery.drills.scoring import Objectives
from recovery.drills.scratch import Droppers, sweep
from statemachines.store import Store

if TYPE_CHECKING:   # Slack, the messages and the driver load only where they are used (a drill's start-up)
    from neo4j import Driver

    from bot.slack.gateway import SlackGateway
    from messages.views import Message

log = logging.getLogger("aegis.drills")


# --- from config --------------------------------------------------------------------------------

def neo4j_scratch_source(config: Config) -> Neo4jSource | None:
    """``drills.scratch.neo4j`` with its password read from the environment at the moment of use."""
    cfg = config.drills.scratch.neo4j
    if cfg is None:
        return None
    password = os.environ.get(cfg.password_env) if cfg.password_env else None
    return {"uri": cfg.uri, "user": cfg.user, "password": password, "database": cfg.database}


def droppers_for(config: Config) -> Droppers:
    sources = sources_from(config)
    scratch_neo4j = neo4j_scratch_source(config)

    def scratch_driver(uri: str) -> Driver:
        from neo4j import GraphDatabase

        # only the server the config names now: a resource row is data, never a reason to connect elsewhere
        if scratch_neo4j is None or uri != scratch_neo4j["uri"]:
            raise RuntimeError(f"{uri} is not the configured scratch Neo4j server (drills.scratch.neo4j)")
        password = scratch_neo4j["password"]
        return GraphDatabase.driver(uri, auth=(scratch_neo4j["user"], password) if password else None)

    def drop_neo4j(uri: str, database: str) -> None:
        from neo4j import GraphDatabase

        cfg = sources.neo4j
        auth = (cfg["user"], cfg["password"]) if cfg and cfg["password"] else None
        with GraphDatabase.driver(uri, auth=auth) as driver:
            driver.execute_query("DROP DATABASE $name IF EXISTS", name=database, database_="system")

    def drop_milvus(uri: str, collection: str) -> None:
        if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
            return   # a scratch Milvus Lite file inside the drill's directory: removed with it
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri)
        try:
            if client.has_collection(collection):
                client.drop_collection(collection)
        finally:
            client.close()

    return Droppers(neo4j=drop_neo4j if sources.neo4j else None, milvus=drop_milvus,
                    neo4j_scratch=scratch_driver if scratch_neo4j else None)


def drill_settings(config: Config, budget_minutes: float | None = None) -> DrillSettings:
    drills = config.drills
    scratch = Path(drills.scratch_dir)
    return DrillSettings(scratch_dir=scratch, report_dir=Path(drills.report_dir) if drills.report_dir
                         else scratch / "reports",
                         restore_budget_seconds=(budget_minutes or drills.restore_budget_minutes) * 60,
                         retest_days=drills.retest_days, pg_bin=drills.pg_bin,
                         # a test hook (like AEGIS_TEST_DISPATCH_DELAY): hold after each step so a test can crash it
                         step_delay_seconds=float(os.environ.get("AEGIS_TEST_DRILL_STEP_DELAY") or 0))


def drill_context(config: Config, store: Store, say: Say | None = None,
                  budget_minutes: float | None = None) -> DrillContext:
    sources = sources_from(config)
    runner = BackupRunner.on(repository_from(config, store), sources)
    objectives = Objectives(config.objectives.rto_minutes * 60, config.objectives.rpo_minutes * 60,
                            config.objectives.mttr_minutes * 60)
    services = [ServiceProbe(s.name, s.tier, tuple(s.depends_on), s.drill_url) for s in config.services]
    return DrillContext(store, runner, drill_settings(config, budget_minutes), objectives, neo4j=sources.neo4j,
                        neo4j_scratch=neo4j_scratch_source(config), milvus_uri=sources.milvus_uri,
                        services=services, droppers=droppers_for(config), say=say or (lambda _line: None))


def sweep_leftovers(config: Config, store: Store) -> list[str]:
    """At start: remove what drills interrupted by a crash left behind (logged)."""
    return sweep(store, droppers_for(config))


# --- results --------------------------------------------------------------------------------------

def result_message(outcome: DrillOutcome, *, trigger: str, requested_by: str | None, config: Config,
                   report_url: str | None = None) -> Message:
    from messages import drill_notices

    return drill_notices.result(
        run_id=outcome.run_id, name=outcome.name, status=outcome.status, trigger=trigger,
        requested_by=requested_by, objectives=[s.as_dict() for s in outcome.scores], steps=outcome.steps,
        figures=outcome.figures, error=outcome.error, report_path=outcome.report_path, report_url=report_url,
        retest_days=config.drills.retest_days, locale=config.locale)


def post_outcome(gateway: SlackGateway | None, config: Config, outcome: DrillOutcome, *, trigger: str,
                 requested_by: str | None, report_url: str | None = None) -> bool:
    """The result, and a notice per backup that failed its restore test, to the ops channel."""
    if gateway is None or not config.slack.ops_channel:
        return False
    from bot.slack.gateway import SlackCallFailed
    from messages import drill_notices

    messages = [result_message(outcome, trigger=trigger, requested_by=requested_by, config=config,
                               report_url=report_url)]
    messages += [drill_notices.restore_failed(b.as_dict(), config.locale) for b in outcome.failed_backups]
    try:
        for message in messages:
            gateway.post(config.slack.ops_channel, message.text, message.blocks)
    except SlackCallFailed as exc:
        log.error("could not post the result of drill %s: %s", outcome.run_id, exc)
        return False
    return True


@dataclass
class DrillDuty:
    """Runs drills for Slack and the schedule and posts their results to the ops channel."""

    config: Config
    store: Store
    gateway: SlackGateway | None
    # stores the drill's report page in the targets and returns a signed link to it (bot/reports/publish.py)
    on_report: Callable[[int], str | None] | None = None

    def __post_init__(self) -> None:
        self.gate = RunGate()

    def run(self, name: str, *, trigger: str, requested_by: str | None = None,
            say: Callable[[str], None] | None = None) -> DrillOutcome:
        """Run drill ``name`` (the caller holds the gate) and post its result."""
        ctx = drill_context(self.config, self.store, say)
        outcome = run_drill(ctx, name, trigger, requested_by)
        log.info("drill %s (%s, %s) %s%s", outcome.run_id, name, trigger, outcome.status,
                 f": {outcome.error}" if outcome.error else "")
        report_url = self.on_report(outcome.run_id) if self.on_report else None
        post_outcome(self.gateway, self.config, outcome, trigger=trigger, requested_by=requested_by,
                     report_url=report_url)
        return outcome
