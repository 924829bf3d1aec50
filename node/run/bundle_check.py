"""Refuse to start when a routed pipeline's model is a MONAI bundle or an nnU-Net folder radnode
cannot honour.

A bundle key radnode cannot honour (no report threshold, two classes, boxes left in voxel
indices, ...), or an nnU-Net channel that no route role feeds, is found only by loading the
model. Loaded first in a worker, it would become every job's failure reason, seen after the first
study; the administrator should see it when starting the node. So ``radnode serve`` loads each
routed bundle and nnU-Net folder once, on the CPU, in a spawned
process that then exits: the supervisor never imports torch. Shipped models and site pipelines
load in the workers as before; on Ray the actors load them, where the packages are.
"""

from __future__ import annotations

from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from node.config import Config, ConfigError, load_config
from pipelines.model_folder import is_monai_bundle, is_nnunet_folder


def check_bundles(config: Config, config_path: Path) -> None:
    """Raise ConfigError, naming the pipeline's key (``model``, or an option such as
    ``options.channels``) and the model's own, for the first routed bundle or nnU-Net folder
    that cannot be honoured."""
    if config.workers.engine != "local":
        return
    routed = dict.fromkeys(route.pipeline for route in config.routes)
    loaded_first = [name for name in routed if (table := config.pipelines.get(name)) is not None and table.model
                    and (is_monai_bundle(Path(table.model)) or is_nnunet_folder(Path(table.model)))]
    if not loaded_first:
        return
    with get_context("spawn").Pool(1) as pool:
        for name in loaded_first:
            refused = pool.apply(bundle_refusal, (str(config_path), name))
            if refused is not None:
                key, reason = refused
                raise ConfigError(f"{config_path} is not valid:\n  pipelines.{name}.{key}: {reason}")


def bundle_refusal(config_path: str, name: str) -> tuple[str, str] | None:
    """Load pipeline ``name`` as a worker would, on the CPU: the key and why its model is refused,
    or None."""
    from node.run.invoke import load_pipeline, pipeline_settings
    from pipelines.model_folder import ModelFolderError

    config = load_config(Path(config_path), check_site_pipelines=False)
    entry, settings = pipeline_settings(config, name)
    try:
        load_pipeline(entry, replace(settings, device="cpu"))
    except ModelFolderError as error:  # BundleError included: one sentence naming the key
        return getattr(error, "key", "model"), str(error)
    return None
