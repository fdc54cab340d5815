"""A client of the runs table on PostgreSQL, the twin of tests.conftest.Client (SQLite).

Plain SQL through psycopg, as a GUI pointed at PostgreSQL would write it:
`%s` placeholders, naive UTC datetimes for the `timestamp without time zone`
columns, rows as mappings (`row["status"]`). Its timestamps read back as
datetimes, the SQLite client's as text in SQLAlchemy's format: both compare in
time order, so a test compares them only with each other.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tests.conftest import Client, new_id

if TYPE_CHECKING:
    import psycopg


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class PgClient(Client):
    """The same verbs as Client, on a PostgreSQL database given by its URL."""

    def __init__(self, url: str) -> None:
        self._url = url
        # libpq takes the URL itself once SQLAlchemy's driver suffix is gone.
        self.conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)

    @property
    def url(self) -> str:
        return self._url

    def connect(self) -> psycopg.Connection[dict[str, Any]]:  # type: ignore[override]
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row,
                               connect_timeout=5)

    def submit(self, config: dict[str, Any] | str | None = None, *, run_id: str | None = None,
               created_at: datetime | None = None, name: str = "test") -> str:
        run_id = run_id or new_id()
        config_json = config if isinstance(config, str) else json.dumps(config or {"sim": {}})
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (%s, %s, 'PENDING', %s, 'minimal.ini', %s)",
                (run_id, name, config_json, created_at or utcnow()),
            )
        return run_id

    def submit_many(self, configs: list[dict[str, Any]], name: str = "test") -> list[str]:
        """Several runs in one transaction (one burst, one commit); their ids in order."""
        ids = [new_id() for _ in configs]
        now = utcnow()
        with self.connect() as connection, connection.transaction(), connection.cursor() as cur:
            cur.executemany(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (%s, %s, 'PENDING', %s, 'minimal.ini', %s)",
                [(run_id, name, json.dumps(config), now)
                 for run_id, config in zip(ids, configs, strict=True)],
            )
        return ids

    def row(self, run_id: str) -> dict[str, Any] | None:  # type: ignore[override]
        with self.connect() as connection:
            return connection.execute("SELECT * FROM runs WHERE id = %s", (run_id,)).fetchone()

    def rows(self) -> list[dict[str, Any]]:
        with self.connect() as connection:
            return connection.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()

    def cancel(self, run_id: str) -> None:
        with self.connect() as connection:
            connection.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = %s", (run_id,))

    def delete(self, run_id: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM runs WHERE id = %s", (run_id,))

    def count(self, status: str) -> int:
        with self.connect() as connection:
            row = connection.execute("SELECT COUNT(*) AS n FROM runs WHERE status = %s",
                                     (status,)).fetchone()
        return int(row["n"]) if row else 0

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Any statement written with the SQLite client's `?` placeholders."""
        with self.connect() as connection:
            connection.execute(statement.replace("?", "%s").encode(), params)

    def pgids(self) -> list[int]:
        with self.connect() as connection:
            rows = connection.execute("SELECT pgid FROM runs WHERE pgid IS NOT NULL").fetchall()
        return [int(row["pgid"]) for row in rows]

    def other_sessions(self) -> int:
        """Sessions on this database other than the one asking: the daemons' connections."""
        with self.connect() as connection:
            row = connection.execute(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row["n"]) if row else 0
