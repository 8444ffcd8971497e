"""tracks.album_artist, album_key, compilation: which album each track is on

album_artist is the tag as read (NULL on existing rows until the file is read again: the
database never had it); album_key and compilation are daemon.library.albums' identity,
computed here for every existing row from its stored path, artist and album, all rows at
once so a compilation's decision sees its whole folder. The next read of a file with an
album artist may move its album to another key.

The rules are imported rather than copied (unlike 0002's path forms): the key is derived
from the row, and what matters is that it equals what the running daemon computes; a
later change to the rules brings its own migration that recomputes the keys.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from daemon.library.albums import AlbumTags, album_identities

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000


def upgrade() -> None:
    # Plain ADD COLUMNs and an index: no table copy on SQLite, however many tracks.
    op.add_column("tracks", sa.Column("album_artist", sa.String(1024), nullable=True))
    op.add_column("tracks", sa.Column("album_key", sa.String(16), nullable=True))
    op.add_column("tracks", sa.Column("compilation", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_index("ix_tracks_album_key", "tracks", ["album_key"])
    _fill_album_keys()


def _fill_album_keys() -> None:
    tracks = sa.table("tracks", sa.column("id", sa.Integer), sa.column("path", sa.String),
                      sa.column("artist", sa.String), sa.column("album", sa.String),
                      sa.column("album_key", sa.String), sa.column("compilation", sa.Boolean))
    conn = op.get_bind()
    rows = conn.execute(sa.select(tracks.c.id, tracks.c.path, tracks.c.artist, tracks.c.album)
                        .order_by(tracks.c.id)).all()
    identities = album_identities([AlbumTags(path, album, None, artist)
                                   for _, path, artist, album in rows])
    changes = [{"row_id": row[0], "key": identity.key, "compilation": identity.compilation}
               for row, identity in zip(rows, identities, strict=True)]
    statement = (tracks.update().where(tracks.c.id == sa.bindparam("row_id"))
                 .values(album_key=sa.bindparam("key"), compilation=sa.bindparam("compilation")))
    for start in range(0, len(changes), BATCH):
        conn.execute(statement, changes[start:start + BATCH])


def downgrade() -> None:
    op.drop_index("ix_tracks_album_key", table_name="tracks")
    with op.batch_alter_table("tracks") as batch:
        batch.drop_column("compilation")
        batch.drop_column("album_key")
        batch.drop_column("album_artist")
