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
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from pipelines.priors import Priors
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
    #: the pipeline's validated options object (the node's config check made it), or a plain
    #: table (tests, benches, a site's own script) that the pipeline validates when it loads
    options: PipelineOptions | Mapping[str, Any] = field(default_factory=dict)
    #: how outputs name their creator (DeviceSerialNumber): the node's host name, also when a
    #: pipeline runs on a cluster machine (``node.run.ray_actor``); None: this machine's name.
    station_name: str | None = None


@dataclass(frozen=True)
class JobInput:
    """The series of one job: spool files per input role, and where to write results."""

    series: Mapping[str, Sequence[Path]]
    output_dir: Path
    job_id: str = "offline"
    #: the findings of radnode's earlier report for this patient, when the route asks for
    #: priors (``priors = true``); None: not asked for
    priors: Priors | None = None


def _as_text(value: Any) -> Any:
    """A version written as a number (``model_version = 2``) is still a version: text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


#: text that a site pipeline may have written as a number
Text = Annotated[str, BeforeValidator(_as_text)]


class JobSummary(BaseModel):
    """What a pipeline reports about one job besides its files, kept on the job in the index.

    The fields are those the node reads; each pipeline subclasses it with its typed findings
    (``NoduleSummary``), which reach the node as that class, through Ray too. ``from_stored``
    reads any stored row or site pipeline's plain dict back as this class (``details``)."""

    #: extra keys: a site pipeline's plain dict, or a stored row read back (``details``);
    #: no protected names: ``model_version`` is a summary key, not a pydantic method
    model_config = ConfigDict(frozen=True, extra="allow", protected_namespaces=())

    #: the model's name as people know it (a shipped folder's model, a site's algorithm)
    model: Text | None = None
    #: the MONAI bundle that ran, "name version"
    bundle: str | None = None
    model_version: Text | None = None
    #: where the pipeline ran: "cpu", "cuda"
    device: str | None = None
    #: sha256 of the model folder (``model_folder.folder_digest``): the exact weights used
    model_sha256: str | None = None
    #: seconds per pipeline stage (``timing.StageClock``), in the order they ran
    seconds: dict[str, float] = {}
    #: the cluster machine and process that ran the job (the ``ray`` executor adds it)
    ran_on: str | None = None

    def to_stored(self) -> dict[str, Any]:
        """The keys a pipeline set, its own first and then the common ones above, as the index
        stores them and people read them; keys never set are left out, not shown as null."""
        data = self.model_dump(exclude_unset=True)
        common = JobSummary.model_fields
        return {**{key: value for key, value in data.items() if key not in common},
                **{key: data[key] for key in common if key in data}}

    @property
    def details(self) -> dict[str, Any]:
        """The pipeline's own keys (``nodules``, ``volumes_ml``), as stored."""
        return {key: value for key, value in self.to_stored().items() if key not in JobSummary.model_fields}

    @staticmethod
    def from_stored(data: Mapping[str, Any]) -> JobSummary:
        """A stored summary (or a site pipeline's plain dict) as the common record.

        A key of the common fields holding something of another type (written by another
        version) is kept for people under "<key> (as stored)" instead of making the job
        unreadable: ``radnode jobs`` must list every job the index holds.
        """
        try:
            return JobSummary.model_validate(dict(data))
        except ValidationError as error:
            unreadable = {str(err["loc"][0]) for err in error.errors() if err["loc"]}
            kept = {key: value for key, value in data.items() if key not in unreadable}
            moved = {f"{key} (as stored)": value for key, value in data.items() if key in unreadable}
            return JobSummary.model_validate({**kept, **moved})


class PipelineSummary(JobSummary):
    """The base of a shipped pipeline's summary: its own keys typed, and a key it does not
    declare (a misspelling) refused when the summary is built, not stored unnoticed."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class SummaryRecord(BaseModel):
    """One item of a summary's list or table (a nodule), typed and closed the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class JobResult:
    """What a pipeline produced.

    ``applicable=False`` is a normal outcome, not an error: the series was routed here but the
    pipeline decided it cannot say anything about it (a tiny series, a non-chest CT). The
    node records ``reason`` on the job and delivers nothing.
    """

    outputs: list[Path] = field(default_factory=list)
    summary: JobSummary = field(default_factory=JobSummary)
    applicable: bool = True
    reason: str = ""
    #: what the writer knew of each output (``write_datasets``), so the node records it without
    #: reading the files back; a pipeline that writes its files another way may leave it empty,
    #: and the node reads each such file's header once.
    objects: list[WrittenObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A site pipeline written before summaries were typed hands a plain dict: still read.
        if not isinstance(self.summary, JobSummary):
            self.summary = JobSummary.from_stored(self.summary)

    @classmethod
    def written(cls, objects: Sequence[WrittenObject], summary: JobSummary) -> JobResult:
        """The result of a pipeline that wrote its objects with ``write_datasets``."""
        return cls(outputs=[o.path for o in objects], summary=summary, objects=list(objects))


class NotApplicable(Exception):
    """Raised inside a pipeline when the input is not something it can analyse."""


class Pipeline(ABC):
    """A model-backed analysis loaded once per worker process and run once per job."""

    #: The inputs this pipeline declares; routes map their series selectors onto these roles.
    inputs: ClassVar[tuple[InputSpec, ...]] = (InputSpec(SERIES_ROLE),)
    #: The options this pipeline reads; the config check validates ``[pipelines.<name>] options``
    #: against it once, and ``self.options`` is that instance.
    Options: ClassVar[type[PipelineOptions]] = PipelineOptions

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.options = self._options(settings.options)

    def _options(self, given: PipelineOptions | Mapping[str, Any]) -> PipelineOptions:
        """The validated object as given; a plain table validated here, once."""
        if not isinstance(given, PipelineOptions):
            return self.Options.model_validate(dict(given))
        if not isinstance(given, self.Options):
            raise TypeError(f"pipeline {self.settings.name!r} reads {self.Options.__qualname__} options, "
                            f"not {type(given).__qualname__}")
        return given

    def input_specs(self) -> tuple[InputSpec, ...]:
        """The inputs this loaded pipeline takes: ``inputs``, unless its options decide them (an
        nnU-Net folder's channels mapped to roles)."""
        return self.inputs

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
