"""Typed records where the node meets the pipelines: a model folder's parameters file, the job
summary the index keeps, and what a Ray actor sends back.

Each was a dict read with ``.get`` defaults or by key: a misspelt key in ``params.toml`` was
ignored in favour of the default, and a summary or an outcome key read wrongly failed only at the
reader. Now each is declared once, checked where it is made, and read by attribute.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from node.index.store import Index, JobSpec
from pipelines.model_folder import ModelFolderError, read_params
from tests.support.harness import NodeProcess, node_config

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
UNKNOWN = "unknown key (check its spelling and the table it is in)"


def _load(kind: str, folder: Path) -> Any:
    """The folder loaded the way its pipeline loads it (imported here: each loader imports torch)."""
    if kind == "denoise":
        from pipelines.denoise.inference import Denoiser
        return Denoiser.load(folder, "cpu")
    if kind == "detector":
        from pipelines.nodule.detector import NoduleDetector
        return NoduleDetector.load(folder, "cpu")
    if kind == "scorer":
        from pipelines.nodule.candidate_detector import CandidateDetector
        return CandidateDetector.load(folder, "cpu")
    from pipelines.tumor.inference import Segmenter
    return Segmenter.load(folder, "cpu")


#: (shipped folder, its kind, the line as shipped, the line misspelt, the key as the refusal names
#: it, what the loaded folder reads from the line): each key's default differs from the file's
#: value, so a loader that ignored the misspelt key would run with the wrong setting.
MISSPELT = [
    ("denoise/weights", "denoise", "restore_mean_sigma_mm = 1.0", "restore_mean_sigma = 1.0",
     "output.restore_mean_sigma", lambda loaded: loaded.preprocessing.restore_mean_sigma_mm == 1.0),
    ("nodule/weights", "detector", "report_threshold = 0.994", "report_treshold = 0.994",
     "inference.report_treshold", lambda loaded: loaded.settings.report_threshold == 0.994),
    ("nodule/scorer_weights", "scorer", "ground_glass = true", "ground_glas = true",
     "candidates.ground_glas", lambda loaded: loaded.settings.ground_glass is True),
    ("tumor/weights/brats2015", "tumor", "fill_core = true", "fill_cores = true",
     "output.fill_cores", lambda loaded: loaded.format.fill_core is True),
]


@pytest.mark.parametrize("shipped, kind, right, wrong, key, reads", MISSPELT, ids=[m[1] for m in MISSPELT])
def test_a_params_toml_with_a_misspelt_key_is_refused_naming_the_file_and_key_and_loads_once_it_is_spelt_right(
        tmp_path, shipped, kind, right, wrong, key, reads):
    folder = shutil.copytree(PIPELINES / shipped, tmp_path / "model")
    params = folder / "params.toml"
    written = params.read_text()
    assert written.count(right) == 1
    params.write_text(written.replace(right, wrong))
    with pytest.raises(ModelFolderError) as refused:
        _load(kind, folder)
    assert str(refused.value) == f"{params} is not valid:\n  {key}: {UNKNOWN}"
    params.write_text(written)
    assert reads(_load(kind, folder))


def test_a_params_json_goes_through_the_same_check_and_is_named_in_the_refusal(tmp_path):
    folder = shutil.copytree(PIPELINES / "denoise" / "weights", tmp_path / "model")
    tables = read_params(folder)
    (folder / "params.toml").unlink()
    params = folder / "params.json"
    params.write_text(json.dumps({**tables, "input": {**tables["input"], "scal": 1000.0}}))
    with pytest.raises(ModelFolderError) as refused:
        _load("denoise", folder)
    assert str(refused.value) == f"{params} is not valid:\n  input.scal: {UNKNOWN}"
    params.write_text(json.dumps(tables))
    assert _load("denoise", folder).preprocessing.halo == tables["input"]["halo"]


def test_every_problem_of_a_params_file_is_named_on_a_line_of_its_own(tmp_path):
    from pipelines.model_folder import load_params
    from pipelines.tumor.params import TumorParams

    params = tmp_path / "params.toml"
    params.write_text('[input]\nroi = [96, 96]\nthreshold = 1.5\n[output]\nfill_core = 1\n'
                      '[[reduced]]\ncontrasts = ["dwi"]\nfolder = "dwi"\n[ensemble]\nmembers = "fold-a"\n')
    with pytest.raises(ModelFolderError) as refused:
        load_params(tmp_path, TumorParams)
    assert str(refused.value).splitlines() == [
        f"{params} is not valid:",
        "  input.roi: too few values",
        "  input.threshold: each threshold must lie between 0 and 1, got [1.5, 1.5, 1.5]",
        "  output.fill_core: fill_core must be true or false, got 1",
        "  reduced[0].contrasts: ['dwi'] must be among ['t1c', 't1', 't2', 'flair'] and include T1c or FLAIR",
        "  ensemble.members: members must be a list of member folder names, got 'fold-a'",
    ]


@pytest.mark.parametrize("kind, table, key", [("denoise", "input", "clip"),
                                              ("nodule", "preprocessing", "intensity_range")])
def test_a_range_whose_low_is_not_below_its_high_is_refused_naming_the_key(tmp_path, kind, table, key):
    from pipelines.denoise.params import DenoiseParams
    from pipelines.model_folder import load_params
    from pipelines.nodule.params import DetectorParams

    params = tmp_path / "params.toml"
    params.write_text(f"[{table}]\n{key} = [500.0, -1000.0]\n")
    with pytest.raises(ModelFolderError) as refused:
        load_params(tmp_path, {"denoise": DenoiseParams, "nodule": DetectorParams}[kind])
    assert f"  {table}.{key}: low must be below high, got [500.0, -1000.0]" in str(refused.value).splitlines()
    from pipelines.denoise.params import DenoiseParams
    from pipelines.model_folder import load_params
    from pipelines.nodule.params import DetectorParams, ScorerParams
    from pipelines.tumor.params import TumorParams

    kinds = {"denoise/weights": DenoiseParams, "nodule/weights": DetectorParams,
             "nodule/scorer_weights": ScorerParams, "tumor/weights": TumorParams}
    files = sorted([*PIPELINES.rglob("params.toml"), *PIPELINES.rglob("params.json")])
    checked: dict[str, list[str]] = {}
    for path in files:
        where = path.parent.relative_to(PIPELINES).as_posix()
        prefix = next(p for p in kinds if where == p or where.startswith(p + "/"))
        load_params(path.parent, kinds[prefix])
        checked.setdefault(prefix, []).append(where)
    print(json.dumps(checked, indent=1))
    assert set(checked) == set(kinds), "each kind of folder has a shipped params file"
    assert sum(map(len, checked.values())) == len(files)


# ---- the job summary --------------------------------------------------------------------------

#: A nodule job's summary as the index stored it before summaries were typed (the pipeline wrote
#: this dict), keys in the order the pipeline wrote them.
OLD_NODULE_ROW = {
    "nodules": [{"score": 0.912, "diameter_mm": 6.1, "volume_mm3": None},
                {"score": 0.75, "diameter_mm": 11.4, "volume_mm3": 512.3}],
    "candidates": 14,
    "lung_ml": 4180,
    "device": "cpu",
    "model_sha256": "3f" * 32,
    "seconds": {"load": 1.52, "preprocess": 2.0, "inference": 9.75, "postprocess": 0.4, "write": 0.21},
}


def _done_job(index: Index) -> int:
    index.add_job(JobSpec(route="r", pipeline="nodule-detection", subject="1.1.1", study_uid="1.1",
                          generation=0, inputs={"series": "1.1.1"}, destinations=[]))
    job = index.claim_job(pid=1, timeout=60)
    assert index.finish_job(job.id, [], "2 objects", attempt=job.attempts)
    return job.id


def test_a_summary_an_older_version_stored_reads_by_attribute_and_shows_under_its_old_key_names(tmp_path):
    from node.operate.admin import model_identity, stage_seconds, summary_rows

    node = NodeProcess(node_config(tmp_path), tmp_path)
    index = node.index()
    job_id = _done_job(index)
    index._db.execute("UPDATE jobs SET summary = ? WHERE id = ?", (json.dumps(OLD_NODULE_ROW), job_id))

    job = index.job(job_id)
    assert job is not None
    assert job.summary.model_sha256 == "3f" * 32 and job.summary.device == "cpu"
    assert job.summary.details["nodules"] == OLD_NODULE_ROW["nodules"]
    assert list(job.summary.to_stored().items()) == list(OLD_NODULE_ROW.items())
    assert model_identity(job) == f"sha256 {'3f' * 6}"
    assert list(stage_seconds(job).items())[-5:] == list(OLD_NODULE_ROW["seconds"].items())
    rows = dict(summary_rows(job.summary))  # the web page's table
    assert rows["lung_ml"] == "4180" and rows["seconds inference"] == "9.75" and rows["candidates"] == "14"
    shown = node.cli("jobs", "--id", str(job_id))
    assert shown.returncode == 0, shown.stderr
    for line in ('"lung_ml": 4180', '"candidates": 14', '"inference": 9.75', f'"model_sha256": "{"3f" * 32}"'):
        assert line in shown.stdout


def test_a_stored_common_key_of_another_type_is_kept_for_people_instead_of_making_the_job_unreadable(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    job_id = _done_job(index)
    index._db.execute("UPDATE jobs SET summary = ? WHERE id = ?",
                      (json.dumps({"model": "unet", "model_version": 3, "seconds": 12.5}), job_id))
    job = index.job(job_id)
    assert job is not None
    assert job.summary.model_version == "3" and job.summary.seconds == {}
    assert job.summary.to_stored() == {"seconds (as stored)": 12.5, "model": "unet", "model_version": "3"}


def test_a_nodule_summary_is_stored_as_the_same_json_the_untyped_pipeline_wrote():
    from pipelines.nodule.contract import FoundNodule, NoduleSummary

    summary = NoduleSummary(
        nodules=[FoundNodule(**nodule) for nodule in OLD_NODULE_ROW["nodules"]],
        candidates=14, lung_ml=4180, device="cpu", model_sha256="3f" * 32, seconds=OLD_NODULE_ROW["seconds"])
    assert json.dumps(summary.to_stored()) == json.dumps(OLD_NODULE_ROW)


def test_a_pipeline_summary_refuses_a_key_it_does_not_declare():
    from pydantic import ValidationError

    from pipelines.denoise.contract import DenoiseSummary

    with pytest.raises(ValidationError, match="modelsha256"):
        DenoiseSummary(slices=3, mean_abs_change_hu=4.5, modelsha256="ab")  # type: ignore[call-arg]


def test_a_site_pipelines_plain_dict_summary_becomes_the_common_record():
    from pipelines.base import JobResult, JobSummary

    result = JobResult(summary={"voxels": 1234, "model": "threshold", "model_version": 2})  # type: ignore[arg-type]
    assert isinstance(result.summary, JobSummary)
    assert result.summary.model == "threshold" and result.summary.model_version == "2"
    assert result.summary.details == {"voxels": 1234}


# ---- the Ray actor's outcome ------------------------------------------------------------------


def test_the_ray_actors_outcome_round_trips_through_pickle_and_the_driver_commits_it_with_where_it_ran(
        tmp_path, data_dir):
    from node.config import parse_config
    from node.receive.spool import Spool
    from node.run.invoke import pipeline_settings
    from node.run.ray_actor import ActorOutcome, PipelineActor
    from node.run.ray_executor import Driver, ship
    from pipelines.base import JobSummary
    from tests.support.harness import threshold_pipeline, threshold_route

    config = parse_config(node_config(tmp_path, routes=[threshold_route()], pipelines=threshold_pipeline(),
                                      destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                     "port": 104}]))
    actor = PipelineActor(*pipeline_settings(config, "hu-threshold", station_name="radnode-host"))
    series = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:3]
    outcome = actor.run({"series": ship(series)}, "7")

    assert isinstance(outcome, ActorOutcome) and outcome.applicable
    assert type(outcome.summary) is JobSummary  # a site pipeline's plain dict, as in-process
    assert outcome.summary.details["voxels"] > 0 and set(outcome.summary.seconds) == {"load", "threshold", "write"}
    assert [name for name, _ in outcome.files] == [o.path.name for o in outcome.objects]
    back = pickle.loads(pickle.dumps(outcome))
    assert back == outcome

    index = Index(config.node.index_path)
    index.add_job(JobSpec(route="threshold", pipeline="hu-threshold", subject="1.1.1", study_uid="1.1",
                          generation=0, inputs={"series": "1.1.1"}, destinations=["pacs"]))
    job = index.claim_job(pid=1, timeout=60)
    driver = Driver(config, index, Spool(config.node.spool), "radnode-host", stop=None)  # type: ignore[arg-type]
    assert driver._commit(job, back)
    done = index.job(job.id)
    assert done is not None and done.state == "done"
    assert done.summary.ran_on == outcome.ran_on and done.summary.details == outcome.summary.details
    assert list(done.summary.to_stored())[-1] == "ran_on"  # shown last, as before
    assert len(index.results(job.id)) == len(outcome.files)


def test_a_shipped_pipelines_typed_summary_reaches_the_ray_driver_typed_without_torch_and_is_stored_unchanged(
        tmp_path):
    import subprocess
    import sys

    from node.config import parse_config
    from node.receive.spool import Spool
    from node.run.ray_actor import ActorOutcome
    from node.run.ray_executor import Driver
    from pipelines.nodule.contract import FoundNodule, NoduleSummary

    summary = NoduleSummary(nodules=[FoundNodule(**nodule) for nodule in OLD_NODULE_ROW["nodules"]],
                            candidates=14, lung_ml=4180, device="cpu", model_sha256="3f" * 32,
                            seconds=OLD_NODULE_ROW["seconds"])
    outcome = ActorOutcome(applicable=False, reason="no lung", summary=summary, files=[], objects=[],
                           ran_on="gpu-1:42", seconds=1.5)
    unpickle = ("import pickle, sys; o = pickle.loads(sys.stdin.buffer.read()); "
                "print(type(o.summary).__qualname__, 'torch' in sys.modules)")
    driver_side = subprocess.run([sys.executable, "-c", unpickle], input=pickle.dumps(outcome),
                                 capture_output=True, check=True)
    assert driver_side.stdout.decode().split() == ["NoduleSummary", "False"]

    config = parse_config(node_config(tmp_path))
    index = Index(config.node.index_path)
    index.add_job(JobSpec(route="r", pipeline="nodule-detection", subject="1.1.1", study_uid="1.1",
                          generation=0, inputs={"series": "1.1.1"}, destinations=[]))
    job = index.claim_job(pid=1, timeout=60)
    driver = Driver(config, index, Spool(config.node.spool), "radnode-host", stop=None)  # type: ignore[arg-type]
    driver._commit(job, pickle.loads(pickle.dumps(outcome)))
    stored = index.job(job.id)
    assert stored is not None and stored.summary.to_stored() == {**OLD_NODULE_ROW, "ran_on": "gpu-1:42"}


# ---- a pipeline's options ---------------------------------------------------------------------


def _threshold_config(tmp_path: Path, **options: Any):
    from node.config import parse_config
    from tests.support.harness import threshold_pipeline, threshold_route

    return parse_config(node_config(tmp_path, routes=[threshold_route()], pipelines=threshold_pipeline(**options),
                                    destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                   "port": 104}]))


def test_a_pipeline_loads_with_the_options_object_the_config_check_validated_not_a_dict_checked_again(tmp_path):
    from node.run.invoke import load_pipeline, pipeline_settings
    from tests.support.hu_threshold import ThresholdOptions

    config = _threshold_config(tmp_path, threshold_hu=150)
    validated = config.pipelines["hu-threshold"].validated_options
    assert isinstance(validated, ThresholdOptions) and validated.threshold_hu == 150
    entry, settings = pipeline_settings(config, "hu-threshold")
    assert settings.options is validated
    assert load_pipeline(entry, settings).options is validated  # the same object: validated once
    unpickled = pickle.loads(pickle.dumps(settings))  # as a Ray actor receives it
    assert isinstance(unpickled.options, ThresholdOptions) and unpickled.options == validated


def test_a_pipeline_handed_another_pipelines_options_object_is_refused_naming_both(tmp_path):
    from pipelines.base import PipelineSettings
    from pipelines.nodule.contract import Options as NoduleOptions
    from tests.support.hu_threshold import HUThreshold

    with pytest.raises(TypeError, match="reads ThresholdOptions options, not Options"):
        HUThreshold(PipelineSettings(name="hu-threshold", options=NoduleOptions()))
