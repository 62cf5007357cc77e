"""A real PostgreSQL primary that archives its WAL with ``aegis wal push``, as production does.

The archive_command runs as the ``postgres`` OS user with Aegis's server-side install
(``SERVER_AEGIS``) against the workspace in ``shared_dir`` (cli_workspace: its config, key, local
storage target and shared SQLite catalog); the workspace config then names the primary
(``components.postgres.primary.dsn``) so ``aegis backup run`` / the backup runner back it up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness.aegis_process import wait_for
from tests.harness.cli_workspace import SERVER_AEGIS, local, migrate_shared_catalog, write_config
from tests.harness.pgcluster import PgNode, PgSingle


def archiving_primary(shared_dir: Path, settings: dict[str, Any] | None = None) -> PgSingle:
    """A started primary archiving with ``aegis wal push`` into ``shared_dir``'s local target
    (``settings`` are appended after the archive_command). The caller destroys it."""
    assert SERVER_AEGIS.exists(), "run ./scripts/setup (it installs .tools/server-venv)"
    write_config(shared_dir, [local(shared_dir)])
    migrate_shared_catalog(shared_dir)
    push = (f"AEGIS_CONFIG={shared_dir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{shared_dir}/aegis.db "
            f"{SERVER_AEGIS} wal push %p")
    pg = PgSingle.create(settings={"archive_command": push, **(settings or {})})
    try:
        write_config(shared_dir, [local(shared_dir)], dsn=pg.primary.dsn())
    except BaseException:
        pg.destroy()
        raise
    return pg


def archive_all(node: PgNode, timeout: float = 60) -> str:
    """Switch to a new WAL segment and wait until the one just finished is archived; its name."""
    last = str(node.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    wait_for(lambda: node.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", last)[0][0],
             timeout=timeout, what=f"{last} archived; server log:\n{node.log_tail()}")
    return last
