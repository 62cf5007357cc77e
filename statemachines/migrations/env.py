"""Alembic environment: runs on the connection handed over by ``Store.migrate``."""

from alembic import context
from sqlmodel import SQLModel

import statemachines.models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through Store.migrate
    raise RuntimeError("run migrations through statemachines.store.Store.migrate()")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
