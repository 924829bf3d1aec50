"""The published BraTS bundle through radnode agrees with MONAI's own run of it (the shared check).

``../shared/checks/bundle-brats/run.sh`` gives ``brats_mri_segmentation`` seed-0 random weights,
runs it through MONAI's ConfigParser on the four BraTS-GLI-00001 NIfTI files (the reference), and
the same contrasts as four DICOM MR series through ``radnode run``; it prints the voxel agreement
inside the brain and exits 0 when it is at least 0.99. Run here as its README line says: from
the project root, with the project's environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

pytestmark = [pytest.mark.data, pytest.mark.slow]

CHECK = DATA.parent / "checks" / "bundle-brats" / "run.sh"
MIN_AGREEMENT = 0.99


def test_the_brats_bundle_through_radnode_agrees_with_monais_own_run_inside_the_brain():
    assert CHECK.is_file(), f"{CHECK} is missing: the shared checks come with ../shared"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PY": sys.executable, "RADNODE": str(bin_dir / "radnode"),
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    ran = subprocess.run(["bash", str(CHECK)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    print(ran.stdout[-3000:])
    found = re.search(r"voxel agreement inside the brain (\d\.\d+)", ran.stdout)
    assert found, ran.stdout[-2000:] + ran.stderr[-2000:]
    agreement = float(found.group(1))
    assert ran.returncode == 0 and agreement >= MIN_AGREEMENT, f"agreement {agreement:.4f}"
