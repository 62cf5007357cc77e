"""outbox: what a committed change must tell Slack, written in the same transaction (delivered later)

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('incident_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=True),
        sa.Column('created_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_try_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('done_at', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('claimed_by', sa.String(), nullable=True),
        sa.Column('claimed_until', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.String(), nullable=True),
        sa.ForeignKeyConstraint(['incident_id'], ['incident.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_outbox_incident_id', 'outbox', ['incident_id'])
    # the dispatcher's scan: pending rows, oldest first
    op.create_index('ix_outbox_pending', 'outbox', ['done_at', 'next_try_at'])


def downgrade() -> None:
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.drop_index('ix_outbox_incident_id', table_name='outbox')
    op.drop_table('outbox')
