"""issue 15 columns

Revision ID: 0002
Revises: 0001
Created: 2026-12-01 01:09:42.183067
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('capture_dead_letters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=160), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('capture_dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_capture_dead_letters_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('files', sa.JSON(), nullable=True))

    with op.batch_alter_table('capture_queue', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('label_key_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('label_trusted', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('relabels', sa.Integer(), server_default='0', nullable=False))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fence', sa.Integer(), nullable=True))

    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('trusted', sa.Boolean(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_column('trusted')
        batch_op.drop_column('key_id')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('fence')

    with op.batch_alter_table('capture_queue', schema=None) as batch_op:
        batch_op.drop_column('relabels')
        batch_op.drop_column('label_trusted')
        batch_op.drop_column('label_key_id')
        batch_op.drop_column('key_id')

    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.drop_column('files')
        batch_op.drop_column('sha256')

    with op.batch_alter_table('capture_dead_letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_capture_dead_letters_request_id'))

    op.drop_table('capture_dead_letters')
