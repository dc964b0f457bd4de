"""job status as a checked enum; the message that carries each job

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 18:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


def upgrade() -> None:
    # batch mode: SQLite adds a CHECK constraint only by rebuilding the table.
    with op.batch_alter_table('jobs') as b:
        b.add_column(sa.Column('message_id', sa.String(length=36), nullable=True))
        b.create_check_constraint(op.f('ck_jobs_job_status'),
                                  "status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")")


def downgrade() -> None:
    with op.batch_alter_table('jobs') as b:
        b.drop_constraint(op.f('ck_jobs_job_status'), type_='check')
        b.drop_column('message_id')
