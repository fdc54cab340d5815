"""The executor the configuration names: the one place that maps `executor` to a class."""

from __future__ import annotations

from fusion_runner.core.config import Config
from fusion_runner.executors.base import Executor


def executor_for(config: Config) -> Executor:
    if config.executor == "slurm":
        from fusion_runner.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_config(config)
    from fusion_runner.executors.local import LocalExecutor

    return LocalExecutor.from_config(config)
