"""one production model of a kind, as a unique index: two promotions at once left two

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_PRODUCTION = "stage = 'production'"


def upgrade() -> None:
    # A database where promotions raced holds several production models of a kind: the one
    # promoted last stays (the one the stations load), the others are archived, as a
    # promotion after it would have done.
    bind = op.get_bind()
    productions = bind.execute(
        sa.text(
            "SELECT id, kind FROM model_versions WHERE stage = 'production' "
            "ORDER BY kind, promoted_at IS NULL, promoted_at DESC, id DESC"
        )
    ).all()
    kept: set[str] = set()
    for version_id, kind in productions:
        if kind in kept:
            bind.execute(
                sa.text(
                    "UPDATE model_versions SET stage = 'archived', archived_at = CURRENT_TIMESTAMP "
                    "WHERE id = :id"
                ),
                {"id": version_id},
            )
        kept.add(kind)
    op.create_index(
        "uq_model_versions_one_production",
        "model_versions",
        ["kind"],
        unique=True,
        sqlite_where=sa.text(ONE_PRODUCTION),
        postgresql_where=sa.text(ONE_PRODUCTION),
    )


def downgrade() -> None:
    op.drop_index("uq_model_versions_one_production", table_name="model_versions")
