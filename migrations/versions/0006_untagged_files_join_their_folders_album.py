"""tracks.album_key, compilation recomputed: untagged files join their folder's album

daemon.library.albums changed its rules: a track without an album tag (a file with no
tags at all included) is on the album its album folder's tagged tracks agree on (a folder
of one album, not a compilation), no longer on an album of its own folder; an album tag's
trailing disc number ("Soul Box (Disc 2)") is dropped before albums are compared; a
missing track has no say in its folder's albums. Every track in the library gets the key
the running daemon computes, all rows at once so each folder's decision sees the whole
folder; a missing track keeps its key (the daemon re-keys it when it comes back). Only
rows whose key or flag changes are written. The schema is unchanged.

The rules are imported rather than copied, as in 0004: what matters is that the stored key
equals what the running daemon computes.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from daemon.library.albums import AlbumTags, album_identities

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
MISSING = "missing"  # daemon.core.states.TrackState.MISSING as stored


def upgrade() -> None:
    tracks = sa.table("tracks", sa.column("id", sa.Integer), sa.column("path", sa.String),
                      sa.column("artist", sa.String), sa.column("album", sa.String),
                      sa.column("album_artist", sa.String), sa.column("state", sa.String),
                      sa.column("album_key", sa.String), sa.column("compilation", sa.Boolean))
    conn = op.get_bind()
    rows = conn.execute(sa.select(tracks.c.id, tracks.c.path, tracks.c.artist, tracks.c.album,
                                  tracks.c.album_artist, tracks.c.album_key,
                                  tracks.c.compilation)
                        .where(tracks.c.state != MISSING).order_by(tracks.c.id)).all()
    identities = album_identities([AlbumTags(row.path, row.album, row.album_artist, row.artist)
                                   for row in rows])
    changes = [{"row_id": row.id, "key": identity.key, "compilation": identity.compilation}
               for row, identity in zip(rows, identities, strict=True)
               if (row.album_key, bool(row.compilation)) != (identity.key,
                                                             identity.compilation)]
    statement = (tracks.update().where(tracks.c.id == sa.bindparam("row_id"))
                 .values(album_key=sa.bindparam("key"), compilation=sa.bindparam("compilation")))
    for start in range(0, len(changes), BATCH):
        conn.execute(statement, changes[start:start + BATCH])


def downgrade() -> None:
    # Nothing to undo in the schema. The keys stay as the newer rules made them: the older
    # daemon recomputes a folder's keys by its own rules whenever it reads one of its files,
    # and until then an untagged file merely keeps counting its folder's album as its album.
    pass
