"""a training job's process by the boot it runs in and its start in clock ticks since that boot:
what tells it from a later process given the same pid, whatever the wall clock did since

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 08:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (Null for the jobs before it, and where /proc is not there: told by times, as before.)
    with op.batch_alter_table("training_jobs") as table:
        table.add_column(sa.Column("process_start", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as table:
        table.drop_column("process_start")
