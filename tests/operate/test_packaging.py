"""The wheel ``pip install .`` builds: what an installed node gets, and nothing it never loads.

The README's first command installs radnode from a wheel, not editable, so whatever the wheel
leaves out is gone from an installed node. Training code and the records of experiments (denoise
candidates, tumor cross-validation, the nodule scorer's per-patient folds) sit in the top-level
``training/``, outside the packages ``packages.find`` includes, so no rule has to keep them out.

The wheel is built once, offline, from a copy of the working tree (a build writes ``build/`` and
``radnode.egg-info`` into the checkout other people are working in, and a ``build/lib`` left there
by an earlier build would put removed files back into the wheel), with the ``SOURCES.txt`` an
editable install leaves beside it. Every shipped pipeline is then built from the unpacked wheel
alone, in a fresh interpreter outside the checkout.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from pipelines.model_folder import folder_digest
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR
from pipelines.registry import SHIPPED, load_class
from tests.conftest import REPO

#: About 7 s to copy the tree and build the wheel, 13 s to load the three shipped models from it (2 cores).
pytestmark = pytest.mark.slow

#: What the copy of the working tree leaves behind: version control, environments, caches, the
#: spool, and earlier build output (which would leak into the wheel).
NOT_COPIED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "spool", ".mypy_cache",
              ".ruff_cache", ".pytest_cache", ".benchmarks", ".whl", ".gl")
#: Files larger than this are weights; two of them with the same bytes are a copy shipped twice.
DUPLICATE_MIN_BYTES = 100_000
#: Folder names whose contents never ship: training code and the records of experiments.
NEVER_SHIPPED_FOLDERS = {"training", "candidates", "crossvalidation", "scorer_folds", "folds"}
NEVER_SHIPPED_FILES = {"crossvalidation.json", "LOG.md"}

#: Run in a fresh interpreter whose only radnode is the unpacked wheel: builds every shipped
#: pipeline with its default model folder and prints, as JSON, where each loaded its model from.
PROBE = """
import json, sys
import node, pipelines
from node.operate.cli import main
from pipelines.base import PipelineSettings
from pipelines.registry import SHIPPED, load_class
models = {name: str(load_class(entry)(PipelineSettings(name=name, device="cpu")).model_dir)
          for name, entry in SHIPPED.items() if load_class(entry).shipped_model is not None}
print(json.dumps({
    "packages": [node.__file__, pipelines.__file__],
    "cli_main_callable": callable(main),
    "models": models,
    "training_modules": sorted(m for m in sys.modules if m.partition(".")[0] == "training"),
}))
"""


@dataclass(frozen=True)
class Wheel:
    path: Path
    unpacked: Path
    #: file name in the wheel -> its bytes' sha256
    digests: dict[str, str]
    sizes: dict[str, int]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leave_an_earlier_sources_list(source: Path) -> None:
    """What an editable install (the README's test command) leaves in a checkout: a
    ``radnode.egg-info/SOURCES.txt`` naming every file. The next build takes every file listed
    there again; here it names training/ as well, which still must not reach the wheel."""
    egg_info = source / "radnode.egg-info"
    egg_info.mkdir()
    files = sorted(p.relative_to(source).as_posix() for package in ("node", "pipelines", "training")
                   for p in (source / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    (egg_info / "SOURCES.txt").write_text("\n".join(files) + "\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    root = tmp_path_factory.mktemp("wheel")
    source, out = root / "source", root / "out"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    leave_an_earlier_sources_list(source)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=600, cwd=root, check=False)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    (path,) = out.glob("radnode-*.whl")
    unpacked = root / "unpacked"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unpacked)
        infos = [info for info in archive.infolist() if not info.is_dir()]
        digests = {info.filename: sha256(archive.read(info)) for info in infos}
    return Wheel(path, unpacked, digests, {info.filename: info.file_size for info in infos})


@pytest.fixture(scope="module")
def loaded_from_wheel(wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """What ``PROBE`` reports, run with the unpacked wheel first on the path and the checkout off it.

    The editable install's finder sits at the end of ``sys.meta_path``, after the path finder, so
    ``PYTHONPATH`` wins; the probe reports the packages' files so the test can check that it did.
    """
    env = {**os.environ, "PYTHONPATH": str(wheel.unpacked)}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path_factory.mktemp("elsewhere"), env=env, check=False)
    assert result.returncode == 0, f"the unpacked wheel does not run its pipelines:\n{result.stderr[-4000:]}"
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    packages = report["packages"]
    assert isinstance(packages, list)
    assert all(Path(p).is_relative_to(wheel.unpacked) for p in packages), packages
    return report


def default_model_folders() -> dict[str, Path]:
    """Each shipped pipeline's default model folder in the checkout (``shipped_model``); a pipeline
    that only runs a site's model (nnU-Net) has none."""
    folders = {}
    for name, entry in SHIPPED.items():
        folder = getattr(load_class(entry), "shipped_model", None)
        if folder is not None:
            folders[name] = folder
    return folders


def files_loaded_from(folder: Path) -> list[Path]:
    """The parameters and weights a radnode model folder's loader reads: ``params.toml``, ``model.pt``
    or ``model.ts``, the scorers ``[scorer] weights`` lists, and the same of each ``[[reduced]]`` folder."""
    params = tomllib.loads((folder / "params.toml").read_text())
    files = [folder / "params.toml"]
    files += [folder / name for name in ("model.pt", "model.ts") if (folder / name).is_file()]
    files += [folder / name for name in params.get("scorer", {}).get("weights", [])]
    for reduced in params.get("reduced", []):
        files += files_loaded_from(folder / reduced["folder"])
    return sorted(set(files))


def in_wheel(path: Path) -> str:
    return path.resolve().relative_to(REPO).as_posix()


def test_the_wheel_carries_the_apache_license_file_and_names_it_in_its_metadata(wheel: Wheel) -> None:
    dist_info = next(PurePosixPath(name).parts[0] for name in wheel.digests if ".dist-info/" in name)
    licenses = [name for name in wheel.digests
                if name.startswith(f"{dist_info}/") and PurePosixPath(name).name == "LICENSE"]
    assert licenses, f"no LICENSE in {dist_info}: {sorted(n for n in wheel.digests if n.startswith(dist_info))}"
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert wheel.digests[licenses[0]] == sha256((REPO / "LICENSE").read_bytes())
    metadata = (wheel.unpacked / dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines(), metadata[:800]
    assert "License-File: LICENSE" in metadata.splitlines(), metadata[:800]


def test_no_training_code_or_experiment_record_is_in_the_wheel(wheel: Wheel) -> None:
    def never_shipped(name: str) -> bool:
        path = PurePosixPath(name)
        return bool(NEVER_SHIPPED_FOLDERS & set(path.parts[:-1])) or path.name in NEVER_SHIPPED_FILES

    in_checkout = [p for p in (REPO / "training").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    shipped = sorted(name for name in wheel.digests if never_shipped(name))
    tops = {PurePosixPath(name).parts[0] for name in wheel.digests if ".dist-info/" not in name}
    # training/ holds 90 files today (the same names the old rules kept out), the wheel none of them
    assert len(in_checkout) >= 20, in_checkout
    assert tops == {"node", "pipelines"}, tops
    assert shipped == [], f"{len(shipped)} of {len(in_checkout)} training or experiment files shipped: {shipped}"


def test_no_two_files_over_100_kb_in_the_wheel_have_the_same_bytes(wheel: Wheel) -> None:
    by_digest: dict[str, list[str]] = defaultdict(list)
    for name, digest in wheel.digests.items():
        if wheel.sizes[name] > DUPLICATE_MIN_BYTES:
            by_digest[digest].append(name)
    copies = {names[0]: names[1:] for names in by_digest.values() if len(names) > 1}
    wasted = sum(wheel.sizes[name] * len(others) for name, others in copies.items())
    large = sum(len(names) for names in by_digest.values())
    # 45 files over 100 kB before the folds left (20 of them copies, 6.3 MB); 25 distinct ones now
    assert copies == {}, f"{len(copies)} of {large} files over 100 kB shipped more than once ({wasted} bytes): {copies}"


def test_every_default_model_folder_is_in_the_wheel_with_the_params_and_weights_its_loader_reads(wheel: Wheel) -> None:
    folders = default_model_folders()
    assert DEFAULT_SCORER_DIR in folders.values()
    for name, folder in folders.items():
        needed = files_loaded_from(folder)
        assert any(p.suffix in {".pt", ".ts"} for p in needed), f"{name}: no weights found in {folder}"
        missing = [in_wheel(p) for p in needed if in_wheel(p) not in wheel.digests]
        assert missing == [], f"{name}: {len(missing)} of {len(needed)} model files not in the wheel: {missing}"
        changed = [in_wheel(p) for p in needed if wheel.digests[in_wheel(p)] != sha256(p.read_bytes())]
        assert changed == [], f"{name}: model files differ from the checkout's: {changed}"


def test_every_shipped_pipeline_builds_from_the_unpacked_wheel_alone_with_its_default_model(
        wheel: Wheel, loaded_from_wheel: dict[str, object]) -> None:
    expected = {name: str(wheel.unpacked / in_wheel(folder)) for name, folder in default_model_folders().items()}
    assert loaded_from_wheel["models"] == expected
    assert loaded_from_wheel["training_modules"] == []


def test_each_default_model_folder_names_the_same_digest_installed_as_in_the_checkout(wheel: Wheel) -> None:
    """Results name the weights they were made with by this digest: an installed node must name
    the one the model card and a checkout name."""
    for name, folder in default_model_folders().items():
        assert folder_digest(wheel.unpacked / in_wheel(folder)) == folder_digest(folder), name


def test_the_radnode_console_script_points_at_node_operate_cli_main(
        wheel: Wheel, loaded_from_wheel: dict[str, object]) -> None:
    (entry_points,) = [name for name in wheel.digests if name.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string((wheel.unpacked / entry_points).read_text())
    assert dict(parser["console_scripts"]) == {"radnode": "node.operate.cli:main"}
    assert loaded_from_wheel["cli_main_callable"] is True
