"""The schema of release df9b829, the last one that made its tables without Alembic.

On a new database this creates every table. On a store that release (or an older one) made, which has the tables
but no `alembic_version`, it creates only the tables missing and adds the nullable columns an older release did not
have yet (what that release's `create_all` did at start), so the store is then recorded at this revision and the
later revisions apply to it. `SCHEMA` is a frozen copy: the models move on, this revision never changes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = sa.MetaData()

sa.Table(
    'adapters', SCHEMA,
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('target_modules', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('lineage', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('number'),
    sa.UniqueConstraint('label'),
)
sa.Table(
    'capture_queue', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=160), nullable=False),
    sa.Column('response_id', sa.String(length=160), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=True),
    sa.Column('held_out', sa.Boolean(), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('messages', sa.JSON(), nullable=False),
    sa.Column('served_output', sa.Text(), nullable=True),
    sa.Column('served_adapter', sa.String(length=160), nullable=True),
    sa.Column('label', sa.Text(), nullable=True),
    sa.Column('label_source', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=80), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('debate_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_capture_queue_created_at', 'created_at'),
    sa.Index('ix_capture_queue_request_id', 'request_id', unique=True),
    sa.Index('ix_capture_queue_response_id', 'response_id'),
    sa.Index('ix_capture_queue_status', 'status'),
)
sa.Table(
    'controls', SCHEMA,
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
)
sa.Table(
    'jobs', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('phase', sa.String(length=32), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('candidate', sa.String(length=160), nullable=True),
    sa.Column('incumbent', sa.String(length=160), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_jobs_status', 'status'),
    sa.Index('one_running_job', 'kind', unique=True, sqlite_where=sa.text("status = 'running'"),
             postgresql_where=sa.text("status = 'running'")),
)
sa.Table(
    'labels', SCHEMA,
    sa.Column('request_id', sa.String(length=160), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('request_id'),
)
sa.Table(
    'promotions', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
)
sa.Table(
    'debates', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('capture_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=160), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=True),
    sa.Column('held_out', sa.Boolean(), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer_kind', sa.String(length=16), nullable=False),
    sa.Column('gold', sa.Text(), nullable=True),
    sa.Column('gold_source', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('stop_round', sa.Integer(), nullable=True),
    sa.Column('rounds', sa.Integer(), nullable=False),
    sa.Column('usable', sa.Boolean(), nullable=False),
    sa.Column('student_correct_first', sa.Boolean(), nullable=True),
    sa.Column('student_correct_last', sa.Boolean(), nullable=True),
    sa.Column('teacher_tokens', sa.Integer(), nullable=False),
    sa.Column('student_tokens', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('accepted_rationales', sa.Integer(), nullable=False),
    sa.Column('reviewed_rationales', sa.Integer(), nullable=False),
    sa.Column('prompt_version', sa.String(length=32), nullable=False),
    sa.Column('agents', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['capture_id'], ['capture_queue.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_debates_capture_id', 'capture_id'),
    sa.Index('ix_debates_created_at', 'created_at'),
    sa.Index('ix_debates_finished_at', 'finished_at'),
    sa.Index('ix_debates_outcome', 'outcome'),
    sa.Index('ix_debates_status', 'status'),
    sa.Index('ix_debates_usable', 'usable'),
)
sa.Table(
    'mag_nodes', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('debate_id', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('agent', sa.String(length=80), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=160), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('target_agent', sa.String(length=80), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('correct', sa.Boolean(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('review_mean', sa.Float(), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_s', sa.Float(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['debate_id'], ['debates.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_nodes_debate_round', 'debate_id', 'round'),
)
sa.Table(
    'mag_edges', SCHEMA,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('debate_id', sa.Integer(), nullable=False),
    sa.Column('src', sa.Integer(), nullable=False),
    sa.Column('dst', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['debate_id'], ['debates.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['dst'], ['mag_nodes.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['src'], ['mag_nodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.Index('ix_mag_edges_debate_id', 'debate_id'),
)


def upgrade() -> None:
    bind = op.get_bind()
    SCHEMA.create_all(bind, checkfirst=True)
    have = sa.inspect(bind)
    for table in SCHEMA.sorted_tables:
        present = {c["name"] for c in have.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"{table.name}.{column.name} is missing from this store and cannot be added to "
                                   "existing rows: the store predates every release this one can upgrade")
            op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("below its first revision a store has no tables: drop the database instead")
