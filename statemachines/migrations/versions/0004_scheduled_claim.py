"""scheduled job claims: one row per (job, fire time), so one replica runs each fire

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'scheduled_claim',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.String(), nullable=False),
        sa.Column('fire_time', sa.String(), nullable=False),
        sa.Column('owner', sa.String(), nullable=False),
        sa.Column('claimed_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'fire_time', name='uq_one_claim_per_fire'),
    )


def downgrade() -> None:
    op.drop_table('scheduled_claim')
