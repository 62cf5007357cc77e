"""monitor: streaks of consecutive samples per finding key, so that a restart keeps counting

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'monitor_streak',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(), nullable=False),
        sa.Column('failing', sa.Boolean(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('checks', sa.JSON(), nullable=True),
        sa.Column('last_at', statemachines.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key'),
    )


def downgrade() -> None:
    op.drop_table('monitor_streak')
