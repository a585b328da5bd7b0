"""a part holds the model version of its first verdict, whose verdict the history's figures
count it at (a candidate judging it after production does not count it twice): filled in
from each part's earliest verdict

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILL_INDEX = "ix_inspections_part_first_fill"


def upgrade() -> None:
    with op.batch_alter_table("parts") as table:
        table.add_column(
            sa.Column(
                "first_model_version_id",
                sa.Integer(),
                sa.ForeignKey("model_versions.id", name="fk_parts_first_model_version_id"),
                nullable=True,
            )
        )
    # Each part's earliest verdict (by time, then id), found through an index of the verdicts
    # by part made for the fill alone (without it each part's look-up read every verdict: a
    # year's history, hours) and dropped after it, nothing else needing it. One statement: the
    # upgrade runs in one transaction on PostgreSQL anyway, and any SQLite runs it.
    op.create_index(FILL_INDEX, "inspections", ["part_id", "inspected_at", "id"])
    op.execute(
        """
        UPDATE parts SET first_model_version_id = (
            SELECT model_version_id FROM inspections
            WHERE inspections.part_id = parts.id
            ORDER BY inspected_at, id
            LIMIT 1
        )
        """
    )
    op.drop_index(FILL_INDEX, table_name="inspections")


def downgrade() -> None:
    with op.batch_alter_table("parts") as table:
        table.drop_column("first_model_version_id")
