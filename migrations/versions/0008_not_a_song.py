"""tracks.song_mark, tracks.not_song_reason

- `tracks.song_mark`: the reviewer's word on what the file is: "not_a_song" (a jingle the
  rules missed) or "song" (a short song the rules caught); NULL: `[library] exclude` and
  `min_song_seconds` decide.
- `tracks.not_song_reason`: why a track in state `not_a_song` is not a song, in words.

The state column is a plain string, so the new state `not_a_song` needs no change there.
Plain ADD COLUMNs: no table copy on SQLite, every row kept.

Revision ID: 0008
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tracks", sa.Column("song_mark", sa.String(16), nullable=True))
    op.add_column("tracks", sa.Column("not_song_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Tracks the old code cannot know go back to the queue; their files are read again.
    op.execute("UPDATE tracks SET state = 'queued' WHERE state = 'not_a_song'")
    with op.batch_alter_table("tracks") as batch:
        batch.drop_column("not_song_reason")
        batch.drop_column("song_mark")
