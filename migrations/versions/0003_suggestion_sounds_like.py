"""suggestions.sounds_like: the nearest confirmed-or-tagged songs by embedding

A JSON list [{"track_id", "path", "genre", "similarity"}, ...] (best first, up to three)
stored with each suggestion when the model gave the song an embedding; NULL for older
suggestions and for models without one. Adding a nullable column keeps every row.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: no table copy on SQLite, however many suggestions there are.
    op.add_column("suggestions", sa.Column("sounds_like", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("suggestions") as batch:
        batch.drop_column("sounds_like")
