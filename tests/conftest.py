from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.training.data_folder import DATA_ROOT
from tests.peers import Orthanc

REPO = Path(__file__).resolve().parents[1]
DATA = DATA_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA}: the shared data folder must sit beside the repository (or set RADNODE_DATA)")
    return DATA


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()
