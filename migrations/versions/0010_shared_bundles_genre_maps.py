"""bundle_files, bundle_chunks, genre_maps: models and the genre map shared by hosts

- `bundle_files` / `bundle_chunks`: on PostgreSQL, the bytes of every file of a model's
  bundle (daemon.suggest.stored_bundles), so another host rebuilds its own copy.
  Backfilled here, on PostgreSQL only, from each registered model's folder where its
  files still exist on this host (a model whose files are gone stays unstored and works
  as before: on the hosts that have it). SQLite keeps its bundles as files only.
- `genre_maps`: the station's genre map, versioned (daemon.tags.stored_genres); the
  leader publishes its genres.toml at its next start.

The storing is imported rather than copied: what the backfill writes must be what the
running daemon reads.

Revision ID: 0010
Revises: 0005
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

from daemon.suggest.stored_bundles import BUNDLE_FILES, file_sha256, store_bundle

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bundle_files",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"],
                                name=op.f("fk_bundle_files_model_id_models")),
        sa.PrimaryKeyConstraint("model_id", "name", name=op.f("pk_bundle_files")),
    )
    op.create_index("ix_bundle_files_sha256", "bundle_files", ["sha256"])
    op.create_table(
        "bundle_chunks",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "seq", name=op.f("pk_bundle_chunks")),
    )
    op.create_table(
        "genre_maps",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(4096), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_genre_maps")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _store_existing_bundles(bind)


def _store_existing_bundles(bind: sa.Connection) -> None:
    models = sa.table("models", sa.column("id"), sa.column("path"), sa.column("sha256"))
    for model_id, path, sha256 in bind.execute(
            sa.select(models.c.id, models.c.path, models.c.sha256).order_by(models.c.id)
    ).all():
        onnx = Path(path)
        # Only a bundle whose model.onnx is still the registered one is stored.
        if onnx.name != BUNDLE_FILES[0] or not onnx.is_file() or file_sha256(onnx) != sha256:
            continue
        store_bundle(bind, model_id, onnx.parent)


def downgrade() -> None:
    op.drop_table("genre_maps")
    op.drop_table("bundle_chunks")
    op.drop_index("ix_bundle_files_sha256", table_name="bundle_files")
    op.drop_table("bundle_files")
