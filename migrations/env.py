"""Alembic environment: the app's metadata, the engine the daemon hands in (or the URL
from alembic.ini / GENRETAGGER_DB_URL when run by hand for `alembic revision`)."""

import os

from alembic import context
from sqlalchemy import create_engine

from daemon.core.db.models import Base

config = context.config
target_metadata = Base.metadata
# Tables that live in our database but are not ours to migrate.
FOREIGN_TABLES = {"apscheduler_jobs"}


def include_name(name, type_, parent_names) -> bool:
    return not (type_ == "table" and name in FOREIGN_TABLES)


def run_migrations() -> None:
    engine = config.attributes.get("connection_engine")
    if engine is None:
        url = os.environ.get("GENRETAGGER_DB_URL") or config.get_main_option("sqlalchemy.url")
        engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,  # SQLite cannot ALTER most things in place
            compare_type=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
