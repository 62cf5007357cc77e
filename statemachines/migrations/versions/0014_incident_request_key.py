"""incident: request_key, the Slack request that declared it (a redelivered one finds it, not a second incident)

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.add_column(sa.Column('request_key', sa.String(), nullable=True))
        batch.create_index(batch.f('ix_incident_request_key'), ['request_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('incident') as batch:
        batch.drop_index(batch.f('ix_incident_request_key'))
        batch.drop_column('request_key')
