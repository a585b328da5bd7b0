"""the history's days and date ranges are the parts' capture days: an index for them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_parts_captured_at", "parts", ["captured_at"])


def downgrade() -> None:
    op.drop_index("ix_parts_captured_at", table_name="parts")
