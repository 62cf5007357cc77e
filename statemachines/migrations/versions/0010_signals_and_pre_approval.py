"""signals: monitor_signal rows (POST /signals) and approval.basis (a step pre-approved by config)

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'monitor_signal',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('digest', sa.String(), nullable=False),
        sa.Column('source', sa.String(), nullable=False),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('host', sa.String(), nullable=False),
        sa.Column('detail', sa.String(), nullable=False),
        sa.Column('at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('received_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('digest'),
    )
    op.create_index('ix_monitor_signal_kind', 'monitor_signal', ['kind'])
    op.create_index('ix_monitor_signal_received_at', 'monitor_signal', ['received_at'])
    with op.batch_alter_table('approval') as batch:
        batch.add_column(sa.Column('basis', sa.String(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('approval') as batch:
        batch.drop_column('basis')
    op.drop_index('ix_monitor_signal_received_at', table_name='monitor_signal')
    op.drop_index('ix_monitor_signal_kind', table_name='monitor_signal')
    op.drop_table('monitor_signal')
