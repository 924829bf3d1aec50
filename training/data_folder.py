"""Where the shared data folder is: the one answer for training, evaluation, tests and benchmarks.

The scans the models are trained and measured on are too large for the repository; they sit in
``shared/data`` beside the checkout (CI has the same layout). ``RADNODE_DATA`` points elsewhere,
for a machine where the folder lives on another disk.
"""

from __future__ import annotations

import os
from pathlib import Path

#: ``$RADNODE_DATA``, else ``../shared/data`` relative to the repository root.
DATA_ROOT = Path(os.environ.get("RADNODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
