"""a part judged again at a new operating point keeps its earlier verdict, superseded

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_ONLY = sa.text("superseded_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("superseded_at", sa.DateTime(), nullable=True))
        batch.drop_constraint("uq_inspection_part_model", type_="unique")
    op.create_index(
        "uq_inspection_part_model_current",
        "inspections",
        ["part_id", "model_version_id"],
        unique=True,
        sqlite_where=CURRENT_ONLY,
        postgresql_where=CURRENT_ONLY,
    )


def downgrade() -> None:
    # Superseded verdicts cannot live under the old one-per-version key: they go. A review of
    # one of their detections stays, unlinked, as ON DELETE SET NULL would leave it: SQLite
    # migrates with foreign keys off, and left it naming a detection that no longer exists.
    op.execute(
        "UPDATE reviews SET prediction_id = NULL WHERE prediction_id IN (SELECT p.id FROM "
        "predictions p JOIN inspections i ON i.id = p.inspection_id "
        "WHERE i.superseded_at IS NOT NULL)"
    )
    op.execute(
        "DELETE FROM predictions WHERE inspection_id IN "
        "(SELECT id FROM inspections WHERE superseded_at IS NOT NULL)"
    )
    op.execute("DELETE FROM inspections WHERE superseded_at IS NOT NULL")
    op.drop_index("uq_inspection_part_model_current", table_name="inspections")
    with op.batch_alter_table("inspections") as batch:
        batch.create_unique_constraint("uq_inspection_part_model", ["part_id", "model_version_id"])
        batch.drop_column("superseded_at")
