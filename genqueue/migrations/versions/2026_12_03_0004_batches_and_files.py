"""JSONL batches and OpenAI-style files: files, file_parts, batches, batch_requests

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 07:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('files',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner_id', sa.String(length=36), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('lines', sa.Integer(), nullable=True),
    sa.Column('batch_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['api_keys.id'], name=op.f('fk_files_owner_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index('ix_files_owner_created', ['owner_id', 'created_at'], unique=False)

    op.create_table('batches',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('owner_id', sa.String(length=36), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('completion_window', sa.String(length=8), nullable=False),
    sa.Column('input_file_id', sa.String(length=40), nullable=True),
    sa.Column('output_file_id', sa.String(length=40), nullable=False),
    sa.Column('error_file_id', sa.String(length=40), nullable=False),
    sa.Column('metadata', _JSON, nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('invalid', sa.Integer(), nullable=False),
    sa.Column('errors', _JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('in_progress_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelling_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['input_file_id'], ['files.id'], name=op.f('fk_batches_input_file_id_files'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['owner_id'], ['api_keys.id'], name=op.f('fk_batches_owner_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches')),
    sa.UniqueConstraint('seq', name=op.f('uq_batches_seq'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_owner_seq', ['owner_id', 'seq'], unique=False)

    op.create_table('file_parts',
    sa.Column('file_id', sa.String(length=40), nullable=False),
    sa.Column('part', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_file_parts_file_id_files'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', 'part', name=op.f('pk_file_parts'))
    )
    op.create_table('batch_requests',
    sa.Column('batch_id', sa.String(length=36), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('custom_id', sa.String(length=512), nullable=True),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('error', _JSON, nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_requests_batch_id_batches'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_batch_requests_job_id_jobs')),
    sa.PrimaryKeyConstraint('batch_id', 'line', name=op.f('pk_batch_requests'))
    )
    with op.batch_alter_table('batch_requests', schema=None) as batch_op:
        batch_op.create_index('ix_batch_requests_custom_id', ['batch_id', 'custom_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('batch_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_requests_custom_id')
    op.drop_table('batch_requests')
    op.drop_table('file_parts')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_owner_seq')

    op.drop_table('batches')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_owner_created')

    op.drop_table('files')
