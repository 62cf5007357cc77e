"""monitor: samples of every check (kept for availability) and the risk conditions they opened

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'monitor_sample',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('check', sa.String(), nullable=False),
        sa.Column('domain', sa.String(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.Column('unit', sa.String(), nullable=False),
        sa.Column('threshold', sa.Float(), nullable=True),
        sa.Column('reason', sa.String(), nullable=False),
        sa.Column('at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    # availability (O4) reads one check over a time range; pruning reads by time
    op.create_index('ix_monitor_sample_check_at', 'monitor_sample', ['check', 'at'])
    op.create_index('ix_monitor_sample_at', 'monitor_sample', ['at'])
    op.create_table(
        'monitor_condition',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(), nullable=False),
        sa.Column('open_key', sa.String(), nullable=True),
        sa.Column('rule', sa.String(), nullable=False),
        sa.Column('level', sa.String(), nullable=False),
        sa.Column('scenario', sa.String(), nullable=True),
        sa.Column('summary', sa.String(), nullable=False),
        sa.Column('checks', sa.JSON(), nullable=True),
        sa.Column('since', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_seen', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('cleared_at', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('incident_id', sa.Integer(), nullable=True),
        sa.Column('last_warned_at', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('evidence', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['incident_id'], ['incident.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('open_key'),
    )
    op.create_index('ix_monitor_condition_key', 'monitor_condition', ['key'])


def downgrade() -> None:
    op.drop_index('ix_monitor_condition_key', table_name='monitor_condition')
    op.drop_table('monitor_condition')
    op.drop_index('ix_monitor_sample_at', table_name='monitor_sample')
    op.drop_index('ix_monitor_sample_check_at', table_name='monitor_sample')
    op.drop_table('monitor_sample')
