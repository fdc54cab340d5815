"""The client API for a GUI or a notebook: submit, cancel, delete, get and list runs.

Everything goes through the `runs` table, as SPEC §2 says a client does: submit
inserts a PENDING row, cancel sets CANCELLED (only on a PENDING or RUNNING row,
with the same conditional update as `fusion-runner cancel`), delete removes the
row of an ended run only. A running fusion-runner daemon does the rest. The
client never creates the database: the daemon does, so start it first.

    from fusion_runner.core.api import Client

    with Client.open("sqlite:////var/lib/fusion-runner/runs.db") as client:
        overrides = {"general_settings": {"max_iters": 4}}
        run_id = client.submit(template="minimal", overrides=overrides, name="4 iterations")
        print(client.get(run_id).status)   # PENDING, soon RUNNING
        client.cancel(run_id)              # True: this call cancelled it
        client.wait(run_id, timeout=60)    # until completed_at is set
        client.delete(run_id)              # only once it has ended

Errors are `FusionRunnerError`s: `UnknownRun` (no such id), `RunNotEnded`
(defined here: delete of a run that has not ended), `InvalidRun` (a submission
the daemon could not run), `ConfigError`/`SchemaError` (no usable database).
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from fusion_runner.core import clientdb, results, runconfig, rundir, templates
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import ConfigError, FusionRunnerError, InvalidRun, UnknownRun
from fusion_runner.core.status import FINAL_STATUSES, RunStatus
from fusion_runner.core.store import Store

MAX_NAME, MAX_TEMPLATE = 255, 100  # String(255), String(100) of SPEC §1
# The label a whole configuration gets when its caller names no template. A
# daemon with templates_dir set applies the configuration over the template the
# row names, so such a caller must name one that is there.
WHOLE_CONFIG_TEMPLATE = "custom"


class RunNotEnded(FusionRunnerError):
    """The run has not ended: cancel it first, then delete it."""


@dataclass(frozen=True)
class RunInfo:
    """One row of the `runs` table (SPEC §1); timestamps are naive UTC."""

    id: str
    name: str | None
    status: str  # a RunStatus, or whatever text a client wrote
    config_json: str
    template: str
    pid: int | None
    pgid: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    current_erlang: float | None
    total_erlangs: int | None
    current_iteration: int | None
    total_iterations: int | None

    @classmethod
    def from_row(cls, row: Any) -> RunInfo:
        return cls(**{field.name: getattr(row, field.name) for field in fields(cls)})

    @property
    def ended(self) -> bool:
        """Final, and no process of the run is left (SPEC §6: completed_at is set)."""
        return self.status not in (RunStatus.PENDING, RunStatus.RUNNING) and (
            self.completed_at is not None
        )


class Client:
    """A connection to the runs table; safe to share between threads. Close it when done."""

    def __init__(self, store: Store, runs_dir: Path | None = None) -> None:
        self.store = store
        self.runs_dir = runs_dir

    @classmethod
    def open(cls, database_url: str, *, runs_dir: Path | None = None) -> Client:
        """A client of the database the daemon uses (`sqlite:///PATH` or `postgresql://...`).

        `runs_dir` only serves `results` for runs whose folder the daemon has
        not recorded yet. ConfigError when there is no such database yet.
        """
        try:
            return cls(clientdb.open_existing(database_url), runs_dir)
        except ImportError as error:  # postgresql:// without the postgres extra
            raise ConfigError(
                f"database_url: {error.name or error} is not installed "
                "(pip install 'fusion-runner[postgres]')"
            ) from None

    @classmethod
    def from_config(cls, config_file: str | os.PathLike[str] | None = None) -> Client:
        """A client of the database the CLI would use: environment > TOML file > defaults,
        the file found as the CLI finds it (`config.find_config_file`)."""
        explicit = None if config_file is None else os.fspath(config_file)
        found = config_module.find_config_file(explicit, os.environ)
        settings = config_module.load(config_file=found)
        return cls.open(settings.database_url, runs_dir=settings.runs_dir)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def submit(
        self,
        template: str | None = None,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        *,
        config: Mapping[str, Mapping[str, object]] | None = None,
        name: str | None = None,
    ) -> str:
        """Insert a PENDING run; its id.

        The GUI's way: `template` (a stem such as `minimal`, or `minimal.ini`)
        and `overrides` (`{section: {key: value}}`, default none) that the
        daemon applies over that template from its `templates_dir`. Or a whole
        configuration as `config` (then `template` is only a label, unless the
        daemon has templates_dir set: then `config` is applied over it too).
        InvalidRun, before anything is inserted, for what the daemon would refuse.
        """
        if config is not None and overrides is not None:
            raise InvalidRun("give overrides of a template or a whole config, not both")
        if config is None and template is None:
            raise InvalidRun("give a template (and overrides), or a whole config")
        label = WHOLE_CONFIG_TEMPLATE if template is None else template
        if config is None:
            templates.file_name(label)  # a name the daemon would refuse fails here already
        config_json = _config_json(config if config is not None else overrides or {})
        if len(name or "") > MAX_NAME or len(label) > MAX_TEMPLATE:
            raise InvalidRun(f"name is at most {MAX_NAME} characters, template {MAX_TEMPLATE}")
        run_id = rundir.new_run_id()
        self.store.insert_run(run_id, name=name, config_json=config_json, template=label)
        return run_id

    def cancel(self, run_id: str) -> bool:
        """Cancel a PENDING or RUNNING run; True if this call did, False if it had ended.

        The daemon stops a running one (SIGTERM, then SIGKILL after its
        stop_grace_seconds) and then sets completed_at: see `wait`.
        """
        before, changed = self.store.cancel(run_id)
        if before is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        return changed

    def delete(self, run_id: str) -> None:
        """Delete the row of an ended run (COMPLETED, FAILED, CANCELLED).

        RunNotEnded for a PENDING or RUNNING one: cancel it first. The run's
        folder under runs_dir stays; it is the daemon's.
        """
        if clientdb.delete_ended(self.store, run_id):
            return
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        raise RunNotEnded(
            f"run {run_id} is {row.status}: only a run that has ended "
            f"({', '.join(sorted(FINAL_STATUSES))}) can be deleted; cancel it first"
        )

    # --- reading ------------------------------------------------------------------------

    def get(self, run_id: str) -> RunInfo:
        """The run's row; UnknownRun if there is none."""
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        return RunInfo.from_row(row)

    def list(
        self, status: str | Iterable[str] | None = None, limit: int | None = None
    ) -> builtins.list[RunInfo]:
        """Runs newest first; only those with `status` (one, or any of several) when given."""
        statuses = [status] if isinstance(status, str) else status
        return [RunInfo.from_row(row) for row in self.store.select_runs(statuses, limit)]

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> RunInfo:
        """The run once it has ended (`RunInfo.ended`); TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (run := self.get(run_id)).ended:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            time.sleep(poll)
        return run

    def results(self, run_id: str) -> builtins.list[results.ErlangPoint]:
        """The Erlang points in the run's output folder so far (FUSION's or the refsim's)."""
        self.get(run_id)  # UnknownRun first
        paths = clientdb.run_paths(self.store, self.runs_dir, run_id)
        if paths is None:
            return []
        return results.read_points(paths.output_dir, subfolders=True)


def _config_json(config: Mapping[str, Mapping[str, object]]) -> str:
    """The JSON text of config, checked as the daemon checks it (SPEC §3)."""
    try:
        text = json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidRun(f"config_json: {error}") from None
    runconfig.parse_config_json(text)
    return text
