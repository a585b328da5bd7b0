"""one word per reviewer: a unique index of reviews by detection and reviewer, and one of the
parts a reviewer marked good; the repeats written before them (two tabs, a double click whose
writes crossed) merged first, every reviewer's word kept

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 00:30:00
"""

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_WORD_PER_DETECTION = "uq_reviews_prediction_reviewer"
ONE_GOOD_PART_PER_REVIEWER = "uq_reviews_good_part_reviewer"
GOOD_PART = sa.text("kind = 'good_part'")


def _merge_repeats(connection: sa.Connection) -> None:
    """Each reviewer's repeated words on one detection kept as one row: the same word twice is
    one word (the earliest kept). A reviewer who said both (confirmed in one tab, a false call
    in another) keeps the confirmation, which is how the rates and the export counted the
    detection (the defective reading wins), and its note says the false call too, with when.
    Parts marked good twice by one reviewer keep the earliest."""
    rows = connection.execute(
        sa.text(
            """
            SELECT r.id, r.prediction_id, r.reviewer, r.kind, r.created_at FROM reviews r
            JOIN (
                SELECT prediction_id, reviewer FROM reviews WHERE prediction_id IS NOT NULL
                GROUP BY prediction_id, reviewer HAVING count(*) > 1
            ) d ON d.prediction_id = r.prediction_id AND d.reviewer = r.reviewer
            ORDER BY r.id
            """
        )
    ).all()
    groups: dict[tuple[int, str], list[sa.Row]] = defaultdict(list)
    for row in rows:
        groups[(row.prediction_id, row.reviewer)].append(row)
    dropped: list[int] = []
    for words in groups.values():
        kept = next((w for w in words if w.kind == "confirmed_defect"), words[0])
        also = [w for w in words if w.kind != kept.kind]
        if also:
            note = "; ".join(
                f"also marked a {w.kind.replace('_', ' ')} by {w.reviewer} at {w.created_at}"
                for w in also
            )
            connection.execute(
                sa.text("UPDATE reviews SET note = :note WHERE id = :id"),
                {"note": note, "id": kept.id},
            )
        dropped += [w.id for w in words if w.id != kept.id]
    dropped += connection.scalars(
        sa.text(
            """
            SELECT id FROM reviews r WHERE kind = 'good_part' AND EXISTS (
                SELECT 1 FROM reviews e WHERE e.kind = 'good_part' AND e.part_id = r.part_id
                AND e.reviewer = r.reviewer AND e.id < r.id
            )
            """
        )
    ).all()
    for start in range(0, len(dropped), 500):
        connection.execute(
            sa.text("DELETE FROM reviews WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": dropped[start : start + 500]},
        )


def upgrade() -> None:
    _merge_repeats(op.get_bind())
    with op.batch_alter_table("reviews") as table:
        table.create_index(ONE_WORD_PER_DETECTION, ["prediction_id", "reviewer"], unique=True)
        table.create_index(
            ONE_GOOD_PART_PER_REVIEWER,
            ["part_id", "reviewer"],
            unique=True,
            sqlite_where=GOOD_PART,
            postgresql_where=GOOD_PART,
        )


def downgrade() -> None:
    with op.batch_alter_table("reviews") as table:
        table.drop_index(ONE_GOOD_PART_PER_REVIEWER)
        table.drop_index(ONE_WORD_PER_DETECTION)
