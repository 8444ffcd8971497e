"""workers, tracks.claimed_by, suggestions.context, decisions.batch_id

- `workers`: one row per running genretagger process that claims work (the service, and
  each `genretagger worker` on any host): its host, pid, role, heartbeat and files done.
  `status` lists them; a worker whose heartbeat stopped has its claimed tracks requeued.
- `tracks.claimed_by`: the workers.id holding a track in `working` (NULL otherwise). No
  foreign key: a worker's row may be pruned long after its tracks moved on.
- `suggestions.context`: the album/artist context that weighed in on the suggestion (the
  mates' genre counts, the reason in words, the audio-only top genres), NULL when none.
- `decisions.batch_id`: the decisions one album-at-a-time action made share it, so one
  undo takes the whole action back. NULL for one-song decisions.

Plain ADD COLUMNs and a new table: no table copy on SQLite, every row kept.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("files_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])
    op.add_column("tracks", sa.Column("claimed_by", sa.Integer(), nullable=True))
    op.create_index("ix_tracks_claimed_by", "tracks", ["claimed_by"])
    op.add_column("suggestions", sa.Column("context", sa.JSON(), nullable=True))
    op.add_column("decisions", sa.Column("batch_id", sa.String(32), nullable=True))
    op.create_index("ix_decisions_batch_id", "decisions", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_batch_id", table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("batch_id")
    with op.batch_alter_table("suggestions") as batch:
        batch.drop_column("context")
    op.drop_index("ix_tracks_claimed_by", table_name="tracks")
    with op.batch_alter_table("tracks") as batch:
        batch.drop_column("claimed_by")
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
