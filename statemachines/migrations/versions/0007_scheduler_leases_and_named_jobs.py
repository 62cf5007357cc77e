"""scheduler: fire claims carry a lease and what to re-run; schedules stored by stable job name

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_claim') as batch:
        batch.add_column(sa.Column('job_name', sa.String(), nullable=False, server_default=''))
        batch.add_column(sa.Column('args', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('lease_until', statemachines.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('done_at', statemachines.models.UTCDateTime(timezone=True), nullable=True))
    # claims written before leases existed were taken by a run that finished or died long ago
    op.execute("UPDATE scheduled_claim SET done_at = claimed_at, lease_until = claimed_at")
    op.create_table(
        'scheduled_job',
        sa.Column('job_id', sa.String(), nullable=False),
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('args', sa.JSON(), nullable=True),
        sa.Column('cron', sa.String(), nullable=True),
        sa.Column('interval_seconds', sa.Float(), nullable=True),
        sa.Column('timezone', sa.String(), nullable=False),
        sa.Column('start_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('misfire_grace_seconds', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('job_id'),
    )


def downgrade() -> None:
    op.drop_table('scheduled_job')
    with op.batch_alter_table('scheduled_claim') as batch:
        batch.drop_column('done_at')
        batch.drop_column('lease_until')
        batch.drop_column('args')
        batch.drop_column('job_name')
