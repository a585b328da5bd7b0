"""the machine a training job runs on: only that machine can tell whether its process lives

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 01:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (Null for the jobs before it: taken for jobs of the machine that looks, as before.)
    with op.batch_alter_table("training_jobs") as table:
        table.add_column(sa.Column("host", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as table:
        table.drop_column("host")
