"""The `runs` table exactly as the FUSION GUI defines it, and the daemon's own tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    """A simulation run; clients insert and cancel, the daemon does the rest (SPEC §1)."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, index=True)
    config_json: Mapped[str] = mapped_column(Text, nullable=False)
    template: Mapped[str] = mapped_column(String(100), nullable=False)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pgid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    current_erlang: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_erlangs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_iteration: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_iterations: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RunClaim(Base):
    """Which daemon claimed a run and the identity of the process it spawned for it.

    A client never reads this table. The process's start makes a reused pid
    distinguishable from the run's own process after a restart. Columns added
    after a release must be nullable: an upgrade step of `schema.STEPS` adds
    them to existing tables with ALTER TABLE ... ADD COLUMN.
    """

    __tablename__ = "fusion_runner_claims"

    run_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pgid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # psutil's create_time (wall clock): what earlier versions compare, still
    # written for them; this version compares the two columns that follow.
    process_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bytes of progress.jsonl already applied to the progress columns, so an
    # adopting daemon continues where the last one stopped.
    progress_offset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Field 22 of /proc/PID/stat (clock ticks since boot) and the boot's id:
    # unlike a wall-clock start time they do not move when the clock is stepped.
    process_start_ticks: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    boot_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Bytes of logs/sim.log already applied to the progress columns (FUSION's
    # log, SPEC §5); NULL while the log does not drive them. 64-bit: a log
    # may outgrow 2 GiB.
    log_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Runs of an executor with a queue of its own (Slurm): set when the daemon
    # takes the run into that queue, while its row stays PENDING; the claim is
    # held (no other daemon takes the run) until the run starts (pid set).
    queued_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The executor's name for the run (Slurm's job id), the node it runs on,
    # and why it waits (Slurm's reason: Resources, Priority, ...).
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    queue_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # When the daemon found its progress stalled (stall_after_seconds); NULL otherwise.
    stalled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RunOutput(Base):
    """A folder outside the run folder where the run's simulation wrote results.

    FUSION writes its results in its own checkout and names the folder only in
    its log (`Saving to: DIR`). A table, not a column: a run may name several
    folders (one per thread, say), each noted once, when first seen, by a
    plain INSERT, where a list in a column would be read and rewritten each
    time; and neither the GUI's `runs` table nor the claims row (replaced
    when a run is claimed again) is the place for it. A client never needs it.
    """

    __tablename__ = "fusion_runner_outputs"

    run_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Worker(Base):
    """A daemon serving the database: who and where it is, and its lease.

    Written by the daemon of `worker_id` (register, heartbeat, clean stop) and
    by another daemon that finds its heartbeat older than the lease
    (`lost_at`). A client reads it only for `fusion-runner workers`. Times are
    naive UTC from each host's own clock: hosts need synchronised clocks (NTP),
    well within `lease_timeout_seconds`.
    """

    __tablename__ = "fusion_runner_workers"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    boot_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    version: Mapped[str] = mapped_column(String(50), nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # Set when the daemon stopped cleanly; NULL while it serves (or died).
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Its runs not being stopped, at its last heartbeat.
    running: Mapped[int] = mapped_column(Integer, nullable=False)
    # When another daemon declared it lost and failed its RUNNING runs; NULL otherwise.
    lost_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RunResult(Base):
    """One Erlang point's result of a run: what `fusion-runner results` shows.

    Written by the daemon from each `erlang_complete` progress event (and from
    `output/*_erlang.json` when the run ends), so that a GUI or a remote client
    reads results without the run folder.
    """

    __tablename__ = "fusion_runner_results"

    run_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    erlang: Mapped[float] = mapped_column(Float, primary_key=True)
    blocking_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The confidence interval's half width (mean ± this); NULL when unknown.
    blocking_ci: Mapped[float | None] = mapped_column(Float, nullable=True)
    iterations: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class RunEvent(Base):
    """A run's history: each thing the daemon did to it, once (never per progress line)."""

    __tablename__ = "fusion_runner_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(12), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # claimed, started, adopted, cancel_seen, sigterm, sigkill, exited, final,
    # stalled, requeued, ...
    event: Mapped[str] = mapped_column(String(40), nullable=False)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class RunMeta(Base):
    """What a client asked of a run beyond the `runs` table: its parent (a rerun), its
    priority and whether it is held. A run without a row here has neither."""

    __tablename__ = "fusion_runner_meta"

    run_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    held: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class SchemaVersion(Base):
    """One row: the version of the daemon's own tables (`schema.STEPS`). `runs` has none."""

    __tablename__ = "fusion_runner_schema"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


RUNS_COLUMNS: tuple[str, ...] = tuple(column.name for column in Run.__table__.columns)
