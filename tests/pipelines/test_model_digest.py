"""The digest a result names (``model_sha256``) covers every file of the weights it was made with.

A model folder may hold weights under any name (the nodule scorer lists 20 ``scorer-*.pt`` files in
its params); a digest over ``model.*`` alone named the same sha256 for different weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.model_folder import folder_digest
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR


def test_changing_one_listed_scorer_weights_file_changes_the_digest(tmp_path: Path) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(DEFAULT_SCORER_DIR, folder)
    before = folder_digest(folder)
    weights = sorted(folder.glob("scorer-*.pt"))
    assert len(weights) == 20
    data = bytearray(weights[7].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight's byte: a different model
    weights[7].write_bytes(bytes(data))
    assert folder_digest(folder) != before


def test_a_record_beside_the_weights_does_not_change_the_digest(tmp_path: Path) -> None:
    folder = tmp_path / "scorer"
    shutil.copytree(DEFAULT_SCORER_DIR, folder)
    before = folder_digest(folder)
    (folder / "evaluation.json").write_text("{}")
    assert folder_digest(folder) == before
