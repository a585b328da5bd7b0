"""how many counted boxes a part's verdict left out: a part a model fires all over keeps its
most confident boxes (every failed class its own), and says how many more there were

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (Null for the verdicts before it, and for errors.)
    with op.batch_alter_table("inspections") as table:
        table.add_column(sa.Column("boxes_left_out", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inspections") as table:
        table.drop_column("boxes_left_out")
