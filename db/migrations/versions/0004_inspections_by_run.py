"""a station's last verdict, from its runs: an index of each run's inspections by time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_inspections_run_inspected_at", "inspections", ["run_id", "inspected_at"])


def downgrade() -> None:
    op.drop_index("ix_inspections_run_inspected_at", table_name="inspections")
