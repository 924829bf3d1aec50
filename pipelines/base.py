"""The contract between the node and every pipeline.

The node knows nothing about models: it hands a pipeline the spool files of the series a
route selected, grouped by the input role the pipeline declared, and gets back the DICOM
files to deliver. Keeping the contract this small is what lets a site plug in its own
pipeline (``entry = "package.module:Class"`` in config.toml) without touching ``node/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipelines.writers.output import WrittenObject

#: Role name under which a series-level route hands its one series to a pipeline.
SERIES_ROLE = "series"


@dataclass(frozen=True)
class InputSpec:
    """One input a pipeline can take, for example the FLAIR series of a brain study."""

    role: str
    required: bool = True
    description: str = ""


def takes_one_series(inputs: Sequence[InputSpec]) -> bool:
    """True for a pipeline that series-level routes feed: its one input is ``SERIES_ROLE``.

    Any other declaration (several inputs, or named roles) takes a study's series by role, so
    only a study-level route can feed it.
    """
    return [spec.role for spec in inputs] == [SERIES_ROLE]


class PipelineOptions(BaseModel):
    """A pipeline's ``options`` table in config.toml; each pipeline declares its own subclass.

    Typed fields with defaults, and no other keys: a misspelt or mistyped option stops the node
    at start, naming the key, instead of being ignored in favour of the default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PipelineSettings:
    """What config.toml's ``[pipelines.<name>]`` table gives a pipeline at load time."""

    name: str
    model: Path | None = None
    device: str = "auto"
    uid_root: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    #: how outputs name their creator (DeviceSerialNumber): the node's host name, also when a
    #: pipeline runs on a cluster machine (``node.run.ray_actor``); None: this machine's name.
    station_name: str | None = None


@dataclass(frozen=True)
class JobInput:
    """The series of one job: spool files per input role, and where to write results."""

    series: Mapping[str, Sequence[Path]]
    output_dir: Path
    job_id: str = "offline"


@dataclass
class JobResult:
    """What a pipeline produced.

    ``applicable=False`` is a normal outcome, not an error: the series was routed here but the
    pipeline decided it cannot say anything about it (a tiny series, a non-chest CT). The
    node records ``reason`` on the job and delivers nothing.
    """

    outputs: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True
    reason: str = ""
    #: what the writer knew of each output (``write_datasets``), so the node records it without
    #: reading the files back; a pipeline that writes its files another way may leave it empty,
    #: and the node reads each such file's header once.
    objects: list[WrittenObject] = field(default_factory=list)

    @classmethod
    def written(cls, objects: Sequence[WrittenObject], summary: dict[str, Any]) -> JobResult:
        """The result of a pipeline that wrote its objects with ``write_datasets``."""
        return cls(outputs=[o.path for o in objects], summary=summary, objects=list(objects))


class NotApplicable(Exception):
    """Raised inside a pipeline when the input is not something it can analyse."""


class Pipeline(ABC):
    """A model-backed analysis loaded once per worker process and run once per job."""

    #: The inputs this pipeline declares; routes map their series selectors onto these roles.
    inputs: ClassVar[tuple[InputSpec, ...]] = (InputSpec(SERIES_ROLE),)
    #: The options this pipeline reads; the config check validates ``[pipelines.<name>] options``
    #: against it, and ``self.options`` is the validated instance.
    Options: ClassVar[type[PipelineOptions]] = PipelineOptions

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.options = self.Options.model_validate(dict(settings.options))

    @abstractmethod
    def run(self, job: JobInput) -> JobResult:
        """Analyse the job's series and write result DICOM files into ``job.output_dir``."""


def resolve_device(requested: str) -> str:
    """Map the config's ``device`` ("auto", "cpu", "cuda", "cuda:1") to what torch can use.

    "auto" picks the GPU when one is present so that the same config works on a laptop and on
    a GPU server; an explicit "cuda" on a machine without one is an error the user must see.
    """
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device = {requested!r} but no CUDA GPU is visible; set device = \"auto\" or \"cpu\""
        )
    return requested
