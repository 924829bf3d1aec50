"""How a training run records itself in the ``training.json`` of the folder it writes."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def training_command(module: str, argv: Sequence[str] | None = None) -> str:
    """The command a training run was started with, for the ``training.json`` of its folder.

    Recorded as given (``argv``, else this process's arguments) rather than rebuilt from the parsed
    options, so that it reproduces the run exactly and cannot fall behind when an option is added.
    """
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
