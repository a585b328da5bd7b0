"""a part's first verdict, whose model version the history's figures count it by: an index of
each part's inspections by time

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 19:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_inspections_part_inspected_at", "inspections", ["part_id", "inspected_at"])


def downgrade() -> None:
    op.drop_index("ix_inspections_part_inspected_at", table_name="inspections")
