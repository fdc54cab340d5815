"""The tables fusion-runner uses, and making sure a database has them.

`runs` is the GUI's table: it is created when missing, never altered. The
daemon's own tables (claims, outputs) are created, and upgraded with ALTER
TABLE when an earlier version made them.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Engine, Table, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import Column, CreateColumn

from fusion_runner.core.errors import ConfigError, SchemaError
from fusion_runner.core.models import RUNS_COLUMNS, Base, Run, RunClaim, RunOutput

runs = cast(Table, Run.__table__)
claims = cast(Table, RunClaim.__table__)
outputs = cast(Table, RunOutput.__table__)
# Tries at creating the daemon's tables when another process creates them too.
CREATE_ATTEMPTS = 3


def ensure_schema(engine: Engine) -> None:
    """Create missing tables, add the columns an earlier version's claims table
    lacks; refuse a `runs` table that lacks a column (never altered: it is the
    GUI's). The daemon's alone: clients open the database as it is (clientdb)."""
    try:
        inspector = inspect(engine)
        if inspector.has_table("runs"):
            present = {column["name"] for column in inspector.get_columns("runs")}
            missing = [name for name in RUNS_COLUMNS if name not in present]
            if missing:
                raise SchemaError(f"the runs table lacks column {missing[0]!r}")
        _create_missing_tables(engine)
        for column in _missing_claim_columns(engine):
            _add_claim_column(engine, column)
    except SQLAlchemyError as error:
        raise ConfigError(f"database_url: cannot open the database: {error}") from None


def _create_missing_tables(engine: Engine) -> None:
    """CREATE TABLE for those missing, tolerant of another daemon creating one at
    the same moment."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            Base.metadata.create_all(engine)
            return
        except SQLAlchemyError:
            # "already exists", or SQLite's immediate "database is locked" for the
            # one of two connections that both turn a read into a write: look
            # again, and try again while a table is still missing.
            present = set(inspect(engine).get_table_names())
            if all(table.name in present for table in Base.metadata.sorted_tables):
                return
            if attempt == CREATE_ATTEMPTS - 1:
                raise


def _missing_claim_columns(engine: Engine) -> list[Column[Any]]:
    # A new inspector each time: one caches what it has read.
    present = {column["name"] for column in inspect(engine).get_columns(claims.name)}
    return [column for column in claims.columns if column.name not in present]


def _add_claim_column(engine: Engine, column: Column[Any]) -> None:
    """ALTER TABLE fusion_runner_claims ADD COLUMN, tolerant of another process
    (a second daemon, a client command) adding it at the same moment."""
    table = engine.dialect.identifier_preparer.format_table(claims)
    definition = CreateColumn(column).compile(dialect=engine.dialect)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {definition}"))
    except SQLAlchemyError as error:
        # Most likely "duplicate column": look again, and fail only if it is still missing.
        if any(missing.name == column.name for missing in _missing_claim_columns(engine)):
            raise SchemaError(f"the {claims.name} table lacks column {column.name!r} and "
                              f"it could not be added: {error}") from None
