"""The executor ``[workers] engine`` names: the one place that knows both implementations."""

from __future__ import annotations

from node.config import Config
from node.index.store import Index
from node.run.executor import Executor, ProcessExecutor


def make_executor(config: Config, config_path: str, index: Index) -> Executor:
    """The executor ``[workers] engine`` names."""
    if config.workers.engine == "ray":
        from node.run.ray_executor import RayExecutor  # imports nothing of Ray until used
        return RayExecutor(config, config_path, index)
    from node.run.worker import worker_main
    return ProcessExecutor(config, config_path, worker_main, index, config.workers.count)
