"""The daemon's claims table as versions before start ticks and boot ids created it."""

from __future__ import annotations

import sqlite3

# CREATE TABLE of fusion_runner_claims from models.py before process_start_ticks
# and boot_id, as SQLAlchemy emitted it for SQLite.
LEGACY_CLAIMS_TABLE = """
CREATE TABLE fusion_runner_claims (
    run_id VARCHAR(12) NOT NULL,
    worker_id VARCHAR(255) NOT NULL,
    claimed_at DATETIME NOT NULL,
    pid INTEGER,
    pgid INTEGER,
    process_start_time FLOAT,
    run_dir TEXT,
    progress_offset INTEGER,
    PRIMARY KEY (run_id)
)
"""
LEGACY_CLAIMS_INDEX = (
    "CREATE INDEX ix_fusion_runner_claims_worker_id ON fusion_runner_claims (worker_id)"
)
LEGACY_CLAIMS_COLUMNS = (
    "run_id, worker_id, claimed_at, pid, pgid, process_start_time, run_dir, progress_offset"
)
# The runs table as the GUI creates it.
RUNS_TABLE = """
CREATE TABLE runs (
    id VARCHAR(12) NOT NULL,
    name VARCHAR(255),
    status VARCHAR(20) NOT NULL,
    config_json TEXT NOT NULL,
    template VARCHAR(100) NOT NULL,
    pid INTEGER,
    pgid INTEGER,
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    completed_at DATETIME,
    error_message TEXT,
    current_erlang FLOAT,
    total_erlangs INTEGER,
    current_iteration INTEGER,
    total_iterations INTEGER,
    PRIMARY KEY (id)
)
"""


def create_legacy_database(connection: sqlite3.Connection) -> None:
    connection.execute(RUNS_TABLE)
    connection.execute("CREATE INDEX ix_runs_status ON runs (status)")
    connection.execute(LEGACY_CLAIMS_TABLE)
    connection.execute(LEGACY_CLAIMS_INDEX)


def downgrade_claims(connection: sqlite3.Connection) -> None:
    """Rebuild the claims table in the legacy schema, keeping its rows' legacy columns."""
    connection.execute("ALTER TABLE fusion_runner_claims RENAME TO claims_before")
    connection.execute("DROP INDEX ix_fusion_runner_claims_worker_id")
    connection.execute(LEGACY_CLAIMS_TABLE)
    connection.execute(LEGACY_CLAIMS_INDEX)
    connection.execute(f"INSERT INTO fusion_runner_claims ({LEGACY_CLAIMS_COLUMNS}) "
                       f"SELECT {LEGACY_CLAIMS_COLUMNS} FROM claims_before")
    connection.execute("DROP TABLE claims_before")
    # An earlier version had no schema version and no workers table either.
    connection.execute("DROP TABLE IF EXISTS fusion_runner_schema")
    connection.execute("DROP TABLE IF EXISTS fusion_runner_workers")


def columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
