"""tracks.quarantined_ctime

- `tracks.quarantined_ctime`: the file's ctime (inode change time) when the track was
  quarantined. A chmod or chown changes neither size nor mtime, only ctime: the walk
  compares it to send a quarantined file whose permissions were fixed back to the queue.
  NULL: not quarantined, or quarantined before this column (retried once at the next walk).

A plain ADD COLUMN: no table copy on SQLite, every row kept.

Revision ID: 0009
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tracks", sa.Column("quarantined_ctime", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tracks") as batch:
        batch.drop_column("quarantined_ctime")
