"""Where a pipeline name from config.toml turns into code.

Shipped pipelines are listed here by name; a site's own pipeline is named in config.toml with
``entry = "package.module:Class"``. Resolution only locates the module (no import), so checking
a config does not load torch or a model. A pipeline's contract (its input roles and options
model) is read from a light ``contract`` module for the shipped ones; a site's pipeline is
imported for it, since its class is where it declares them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.base import InputSpec, Pipeline, PipelineOptions

#: name -> "module:Class" of the pipelines that ship with radnode.
SHIPPED: dict[str, str] = {
    "ct-denoise": "pipelines.denoise.pipeline:CTDenoise",
    "tumor-segmentation": "pipelines.tumor.pipeline:TumorSegmentation",
    "nodule-detection": "pipelines.nodule.pipeline:NoduleDetection",
    "nnunet-segmentation": "pipelines.nnunet.pipeline:NnUNetSegmentation",
}
#: name -> module with ``INPUTS`` and ``Options`` of a shipped pipeline, importable without torch.
CONTRACTS: dict[str, str] = {
    "ct-denoise": "pipelines.denoise.contract",
    "tumor-segmentation": "pipelines.tumor.contract",
    "nodule-detection": "pipelines.nodule.contract",
    "nnunet-segmentation": "pipelines.nnunet.contract",
}


@dataclass(frozen=True)
class Contract:
    """What a pipeline takes: the input roles routes must fill, and its options model.

    ``roles``: a contract whose roles depend on its options (``inputs_for`` in the contract
    module, as an nnU-Net folder's channel mapping) gives them from the validated options.
    """

    inputs: tuple[InputSpec, ...]
    options: type[PipelineOptions]
    roles: Callable[[Any], tuple[InputSpec, ...]] | None = None

    def inputs_for(self, options: PipelineOptions) -> tuple[InputSpec, ...]:
        return self.roles(options) if self.roles is not None else self.inputs


def contract(name: str, site_entry: str | None = None) -> Contract:
    """The contract of pipeline ``name``; a site's pipeline (``site_entry``, config.toml's
    ``entry``) is imported to read it."""
    entry = resolve_entry(name, site_entry)
    if site_entry is None and name in CONTRACTS:
        module = importlib.import_module(CONTRACTS[name])
        return Contract(tuple(module.INPUTS), module.Options, getattr(module, "inputs_for", None))
    cls = load_class(entry)
    return Contract(tuple(cls.inputs), cls.Options)


def resolve_entry(name: str, site_entry: str | None = None) -> str:
    """The ``module:Class`` that implements pipeline ``name`` (a site's ``entry`` from config.toml,
    else the shipped one); LookupError says what is missing."""
    entry = site_entry or SHIPPED.get(name)
    if entry is None:
        shipped = ", ".join(sorted(SHIPPED)) or "none in this version"
        raise LookupError(
            f"no pipeline named {name!r}: shipped pipelines are {shipped}; "
            f"for your own, add [pipelines.{name}] with entry = \"module:Class\""
        )
    module = entry.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise LookupError(f"pipeline {name!r}: module {module!r} of entry {entry!r} is not importable")
    return entry


def load_class(entry: str) -> type[Pipeline]:
    from pipelines.base import Pipeline

    module_name, class_name = entry.split(":", 1)
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise LookupError(f"{entry} is not a subclass of pipelines.base.Pipeline")
    return cls
