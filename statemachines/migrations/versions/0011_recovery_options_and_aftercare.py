"""incident: recovery_options (the responders' choices), failure_at (RPO baseline), aftercare, protected

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

import statemachines.models

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.add_column(sa.Column('recovery_options', sa.JSON(), nullable=False, server_default='{}'))
        batch.add_column(sa.Column('failure_at', statemachines.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('aftercare', sa.String(), nullable=True))
        batch.add_column(sa.Column('protected', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.drop_column('protected')
        batch.drop_column('aftercare')
        batch.drop_column('failure_at')
        batch.drop_column('recovery_options')
