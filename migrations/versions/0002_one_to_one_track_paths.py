"""track paths: one-to-one stored form (literal backslashes doubled)

Before this revision a byte that is not UTF-8 was stored as `\\xNN` but a literal
backslash was stored as itself, so a file named `a\\xe9.mp3` (backslash, x, e, 9) and one
whose name has the raw byte 0xE9 shared one row. Now a literal backslash is doubled
(daemon.paths). Each row is read the way the old code opened it (`\\xNN` with NN in
80..ff is the raw byte, any other backslash literal) and written in the new form; only
rows containing a backslash change. The old reading is injective, so no two rows meet.

Both forms are copied here rather than imported: a migration must keep doing what it
did when daemon.paths changes again.

Revision ID: 0002
Revises: 0001
"""

import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])")
_NEW_TOKEN = re.compile(r"\\(?:(\\)|x([89a-f][0-9a-f]))")
# Rows are parked here between the two passes: relative paths never start with "/", so
# no row can already hold one of these.
_PARKED = "//0002-migrating/"


def old_to_filesystem(stored: str) -> str:
    return _OLD_ESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)


def filesystem_to_new(relpath: str) -> str:
    return "".join("\\\\" if ch == "\\" else f"\\x{ord(ch) - 0xDC00:02x}"
                   if "\udc80" <= ch <= "\udcff" else ch for ch in relpath)


def new_to_filesystem(stored: str) -> str:
    return _NEW_TOKEN.sub(lambda m: "\\" if m.group(1) else chr(0xDC00 + int(m.group(2), 16)),
                          stored)


def filesystem_to_old(relpath: str) -> str:
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else ch
                   for ch in relpath)


def old_to_new(stored: str) -> str:
    return filesystem_to_new(old_to_filesystem(stored))


def new_to_old(stored: str) -> str:
    return filesystem_to_old(new_to_filesystem(stored))


def _rewrite(convert: Callable[[str], str]) -> None:
    """Rewrite every track path holding a backslash, in two passes (park, then place) so
    that a new value never meets an old one not yet rewritten."""
    tracks = sa.table("tracks", sa.column("id", sa.Integer), sa.column("path", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(tracks.c.id, tracks.c.path)
                        .where(tracks.c.path.contains("\\", autoescape=True))).all()
    changed = [(id_, convert(path)) for id_, path in rows if convert(path) != path]
    for id_, _ in changed:
        conn.execute(tracks.update().where(tracks.c.id == id_)
                     .values(path=f"{_PARKED}{id_}"))
    for id_, path in changed:
        conn.execute(tracks.update().where(tracks.c.id == id_).values(path=path))


def upgrade() -> None:
    _rewrite(old_to_new)


def downgrade() -> None:
    # Two files told apart only by the new form meet again in the old one: the unique
    # constraint on tracks.path then stops the downgrade rather than merge them.
    _rewrite(new_to_old)
