"""decisions.file_fields_before, decisions.file_genre

- `decisions.file_fields_before`: the file's genre fields as stored just before the
  decision's write (every genre field and which tags were absent, JSON); an undo puts
  exactly these back. On an undo row: the fields that undo puts back.
- `decisions.file_genre`: the genre(s) the file read back after the decision's write
  ("" when it has none), what the page and the CLI tell the director.

Plain ADD COLUMNs: no table copy on SQLite, every row kept. Decisions written before
this revision have no fields; undoing one writes its previous genre back, as before.

Revision ID: 0007
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("file_fields_before", sa.JSON(), nullable=True))
    op.add_column("decisions", sa.Column("file_genre", sa.String(1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("file_genre")
        batch.drop_column("file_fields_before")
