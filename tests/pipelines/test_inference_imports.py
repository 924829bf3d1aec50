"""Inference stays apart from training: a node runs every shipped pipeline without training code.

Each pipeline's training, evaluation, data preparation and synthesis live in the top-level
``training/<name>/`` (shared parts in ``training/``), and the packages only
they use sit in pyproject's training extras, so a node installed without those extras works. A
fresh interpreter imports what a worker imports and builds every shipped pipeline with its
shipped weights; an import of training code anywhere on that path shows up here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO

#: pyproject extras whose packages only training and evaluation need.
TRAINING_EXTRAS = ("evaluation", "training")

#: Prints, as JSON, the training modules and training-only distributions that ``sys.modules``
#: holds after the statements given as argv[1] ran; argv[2] is the JSON list of those distributions.
PROBE = """
import json, re, sys
from importlib.metadata import packages_distributions
exec(sys.argv[1])
training_only = set(json.loads(sys.argv[2]))
owners = packages_distributions()
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
tops = {name.partition(".")[0] for name in list(sys.modules)}
print(json.dumps({
    "training_modules": sorted(m for m in list(sys.modules) if m.partition(".")[0] == "training"),
    "training_packages": sorted({norm(d) for top in tops for d in owners.get(top, ())} & training_only),
}))
"""

#: What a worker does before its first job: import the node's worker and build each shipped pipeline
#: that ships its model (nnunet-segmentation runs only a site's folder).
WORKER = """
from node.run import worker
from pipelines.base import PipelineSettings
from pipelines.registry import SHIPPED, load_class
for name, entry in SHIPPED.items():
    if getattr(load_class(entry), "shipped_model", None) is not None:
        load_class(entry)(PipelineSettings(name=name, device="cpu"))
"""


def training_only_packages() -> list[str]:
    """Distributions named in a training extra and not in the node's own dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group()).lower() for r in requirements}

    extras = project["optional-dependencies"]
    wanted = set().union(*(names(extras.get(extra, [])) for extra in TRAINING_EXTRAS))
    return sorted(wanted - names(project["dependencies"]))


def imported_after(statements: str) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, statements, json.dumps(training_only_packages())],
                            capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_worker_loads_every_shipped_pipeline_without_training_code_or_training_only_packages():
    assert "bm3d" in training_only_packages()  # the denoiser's evaluation anchor, an extra's package
    loaded = imported_after(WORKER)
    assert loaded == {"training_modules": [], "training_packages": []}, loaded


def test_the_probe_sees_a_training_module_and_a_training_only_package_when_one_is_imported():
    """The check above can fail: the same probe, after an import of training code, names it."""
    loaded = imported_after("import training.nodule.synthesis, training.record, bm3d")
    assert loaded == {"training_modules": ["training", "training.nodule", "training.nodule.synthesis",
                                           "training.record"],
                      "training_packages": ["bm3d"]}, loaded
