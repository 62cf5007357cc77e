"""drills: drill_run rows, restore-test results and recorded contents on backup_catalog

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backup_catalog') as batch:
        batch.add_column(sa.Column('contents', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('restore_tested_at', statemachines.models.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column('restore_test_ok', sa.Boolean(), nullable=True))
        batch.add_column(sa.Column('restore_test_reason', sa.String(), nullable=False, server_default=''))
    op.create_table(
        'drill_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('trigger', sa.String(), nullable=False),
        sa.Column('requested_by', sa.String(), nullable=True),
        sa.Column('scenario', sa.String(), nullable=True),
        sa.Column('status', sa.String(), nullable=False),
        sa.Column('started_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('finished_at', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('owner', sa.String(), nullable=False),
        sa.Column('lease_until', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('steps', sa.JSON(), nullable=True),
        sa.Column('figures', sa.JSON(), nullable=True),
        sa.Column('objectives', sa.JSON(), nullable=True),
        sa.Column('scratch', sa.JSON(), nullable=True),
        sa.Column('cleaned_at', statemachines.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('report_path', sa.String(), nullable=True),
        sa.Column('error', sa.String(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_drill_run_name', 'drill_run', ['name'])
    op.create_index('ix_drill_run_status', 'drill_run', ['status'])


def downgrade() -> None:
    op.drop_index('ix_drill_run_status', table_name='drill_run')
    op.drop_index('ix_drill_run_name', table_name='drill_run')
    op.drop_table('drill_run')
    with op.batch_alter_table('backup_catalog') as batch:
        batch.drop_column('restore_test_reason')
        batch.drop_column('restore_test_ok')
        batch.drop_column('restore_tested_at')
        batch.drop_column('contents')
