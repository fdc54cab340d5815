"""Which run of the queue may start now, by the cores it takes (`max_cores`).

A run's cores are counted by `core/cores.py` from its configuration (its
`config_json`, over its template when the daemon has `templates_dir`). The head
of the queue (higher priority first, then oldest; held runs skipped) starts
only while the cores of the live runs plus its own fit in `max_cores`; a run
larger than `max_cores` starts alone, once nothing else is live.

Starvation: strict order. A head that does not fit blocks every run behind it,
however small, until enough live runs end; so a large run is never overtaken,
and since the live runs end and no other starts meanwhile, it always starts.
The price is idle cores while it waits. Runs being stopped count until their
processes are gone. `max_concurrent_runs` still bounds the runs, whatever their
cores. An executor with a queue of its own (Slurm) gives each job its cores:
there `max_cores` is not applied.
"""

from __future__ import annotations

import logging

from fusion_runner.core import cores, runconfig, templates
from fusion_runner.core.config import Config
from fusion_runner.core.errors import InvalidRun
from fusion_runner.core.store import ClaimedRun, Store
from fusion_runner.daemon.liverun import LiveRun

log = logging.getLogger("fusion_runner")


class Admission:
    config: Config
    store: Store
    live: dict[str, LiveRun]
    _run_cores: dict[str, int]  # cores of each live run, counted once (runs.RunsState)

    def _admit(self, candidate: ClaimedRun) -> bool:
        """Whether the head of the queue may start now (the store asks before claiming)."""
        wanted = self._cores_of(candidate.config_json, candidate.template)
        used = self._live_cores()
        if self.live and used + wanted > self.config.max_cores:
            log.debug("run=%s action=waiting reason=cores cores=%d live_cores=%d max_cores=%d",
                      candidate.id, wanted, used, self.config.max_cores)
            return False
        self._run_cores[candidate.id] = wanted
        return True

    def _live_cores(self) -> int:
        """The cores of the live runs; a run adopted from an earlier life counted from
        its row the first time."""
        for run_id in [run_id for run_id in self._run_cores if run_id not in self.live]:
            del self._run_cores[run_id]
        unknown = [run_id for run_id in self.live if run_id not in self._run_cores]
        if unknown:
            rows = self.store.get_runs(unknown)
            for run_id in unknown:
                row = rows.get(run_id)
                self._run_cores[run_id] = 1 if row is None else self._cores_of(
                    str(row.config_json), str(row.template))
        return sum(self._run_cores[run_id] for run_id in self.live)

    def _cores_of(self, config_json: str, template: str | None) -> int:
        try:
            config = runconfig.parse_config_json(config_json)
            if self.config.templates_dir is not None:
                config = templates.configuration(self.config.templates_dir, template, config)
        except (InvalidRun, OSError, ValueError):
            return 1  # it fails when it starts; meanwhile it takes one core
        return cores.run_cores(config, refsim=cores.is_refsim(self.config.sim_command),
                               cpus=cores.usable_cpus())
