"""a one-off run (an upload on the Inspect page, `defects inspect`) is marked as one, not told
by its source: a batch of a folder named `cli` or `dashboard upload` was taken for one, and
the floor's pages passed it over

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sources the one-off runs recorded before this revision (db.models' UPLOAD_SOURCE and
# INSPECT_COMMAND_SOURCE then): each run recorded with one is taken for a one-off, as it was.
EARLIER_ONE_OFF_SOURCES = ("dashboard upload", "cli")


def upgrade() -> None:
    with op.batch_alter_table("inspection_runs") as table:
        table.add_column(
            sa.Column("one_off", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    runs = sa.table(
        "inspection_runs", sa.column("source", sa.Text), sa.column("one_off", sa.Boolean)
    )
    op.execute(runs.update().where(runs.c.source.in_(EARLIER_ONE_OFF_SOURCES)).values(one_off=True))


def downgrade() -> None:
    with op.batch_alter_table("inspection_runs") as table:
        table.drop_column("one_off")
