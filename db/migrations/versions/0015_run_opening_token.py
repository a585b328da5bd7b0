"""a run holds the token its station made to open it: where the run's INSERT was committed but
the connection dropped before the station heard it, the station's next try opened a second
run, and the first stayed open for good (the Live page and `defects status` showed it)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPENING_INDEX = "uq_inspection_runs_opening"


def upgrade() -> None:
    with op.batch_alter_table("inspection_runs") as table:
        table.add_column(sa.Column("opening", sa.String(36), nullable=True))
        table.create_index(OPENING_INDEX, ["opening"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("inspection_runs") as table:
        table.drop_index(OPENING_INDEX)
        table.drop_column("opening")
