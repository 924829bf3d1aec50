"""A tumor training run carried over several sessions (``fit --pause-after`` / ``--resume``).

The cross-validation folds take 2.4 hours each on a CPU without AMX tiles, longer than a session:
a run paused and resumed must end with exactly the weights of the same run uninterrupted (same
schedule, same random patches and noise), and a resume must refuse to mix two recipes or to
overwrite a paused run. On two small phantom brains in ``prepare``'s format, with the shipped
network and 24^3 patches, so that each iteration takes a fraction of a second. In float32: bit
equality needs deterministic kernels, and oneDNN's bfloat16 backward pass on this AVX512-BF16 CPU
was not (two identical steps on 16^3 patches differed, some with NaN; 24^3 and up agreed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training.tumor import fit

pytestmark = [pytest.mark.slow]

INIT = Path(__file__).resolve().parents[3] / "pipelines" / "tumor" / "weights"
ITERATIONS = 4


def _phantom_brains(folder: Path) -> None:
    """``brats2015_pat9001`` with a labelled tumor and a tumor-free ``healthy_pat9001``."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    shape = (32, 32, 32)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    brain = sum((g - 16) ** 2 for g in grids) <= 14**2
    tumor = sum((g - c) ** 2 for g, c in zip(grids, (16, 11, 18))) <= 5**2
    for name, labels in (("brats2015_pat9001", np.where(tumor, 4, 0)), ("healthy_pat9001", np.zeros(shape))):
        contrasts = {role: (rng.standard_normal(shape) * brain + 2.0 * (labels > 0)).astype(np.float16)
                     for role in ("t1c", "flair")}
        np.savez_compressed(folder / f"{name}.npz", **contrasts, brain=brain.astype(np.uint8),
                            labels=labels.astype(np.uint8), ignore=np.zeros(shape, np.uint8))


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--init", str(INIT), "--out", str(out), "--train", "pat9001",
            "--tumor-free", "healthy_pat9001", "--patch", "24", "--batch", "2", "--iterations", str(ITERATIONS),
            "--seed", "15", "--thick-slices", "0.5", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory,
         monkeypatch_module: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """One run uninterrupted, and the same run paused after every iteration and resumed (on one
    thread; the suite's thread count is given back afterwards)."""
    monkeypatch_module.setattr(fit, "native_cpu_bfloat16", lambda: False)
    root = tmp_path_factory.mktemp("fit")
    data = root / "npz"
    _phantom_brains(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fit.main(_command(data, root / "whole"))
    fit.main(_command(data, root / "parts", "--pause-after", "0"))
    paused_folder = sorted(p.name for p in (root / "parts").iterdir())
    for _ in range(ITERATIONS - 1):
        fit.main(_command(data, root / "parts", "--pause-after", "0", "--resume"))
    (root / "paused_folder.json").write_text(json.dumps(paused_folder))
    yield {"root": root, "data": data, "whole": root / "whole", "parts": root / "parts"}
    torch.set_num_threads(threads)


def test_a_run_paused_after_every_iteration_ends_with_the_weights_of_the_run_uninterrupted(
        runs: dict[str, Path]) -> None:
    whole = torch.load(runs["whole"] / "model.pt", weights_only=True)
    parts = torch.load(runs["parts"] / "model.pt", weights_only=True)
    assert whole.keys() == parts.keys()
    differing = [name for name in whole if not torch.equal(whole[name], parts[name])]
    assert differing == []
    first_layer = next(name for name in whole if name.endswith("weight"))
    start = torch.load(INIT / "model.pt", weights_only=True)
    assert not torch.equal(whole[first_layer], start[first_layer])  # it trained, not copied the init


def test_a_paused_folder_holds_only_its_checkpoint_so_the_node_cannot_serve_it(runs: dict[str, Path]) -> None:
    assert json.loads((runs["root"] / "paused_folder.json").read_text()) == ["checkpoint.pt"]


def test_the_finished_run_lists_each_session_and_drops_its_checkpoint(runs: dict[str, Path]) -> None:
    record = json.loads((runs["parts"] / "training.json").read_text())
    assert record["iterations_run"] == ITERATIONS
    assert [session["iterations"] for session in record["sessions"]] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert "--resume" not in record["command"]  # the recipe as first started, to reproduce it in one go
    assert record["loss_per_100"] == json.loads((runs["whole"] / "training.json").read_text())["loss_per_100"]
    assert not (runs["parts"] / fit.CHECKPOINT).exists()
    assert (runs["parts"] / "params.toml").exists()


def test_resuming_with_another_recipe_is_refused_and_names_the_option(runs: dict[str, Path]) -> None:
    out = runs["root"] / "refused"
    fit.main(_command(runs["data"], out, "--pause-after", "0"))
    with pytest.raises(SystemExit, match="--seed is 16.*started with 15"):
        fit.main([*_command(runs["data"], out, "--resume"), "--seed", "16"])
    with pytest.raises(SystemExit, match="holds a paused run.*--resume"):
        fit.main(_command(runs["data"], out))
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        fit.main(_command(runs["data"], runs["root"] / "never-started", "--resume"))
