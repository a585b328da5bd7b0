"""the review queue: which detections a person has decided, an index of reviews by prediction

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 20:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reviews_prediction_id", "reviews", ["prediction_id"])


def downgrade() -> None:
    op.drop_index("ix_reviews_prediction_id", table_name="reviews")
