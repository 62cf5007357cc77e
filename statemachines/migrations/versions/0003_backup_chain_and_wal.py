"""backup catalog: plaintext checksum (WAL idempotency) and incremental parent

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backup_catalog', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_sha256', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('parent_run_id', sa.String(), nullable=True))
        batch_op.create_index('ix_backup_catalog_object_name', ['object_name'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('backup_catalog', schema=None) as batch_op:
        batch_op.drop_index('ix_backup_catalog_object_name')
        batch_op.drop_column('parent_run_id')
        batch_op.drop_column('source_sha256')
