"""The tests' threshold pipeline behind an import that takes as long as torch and MONAI do.

A site pipeline pays most of its load time importing its libraries, before its class exists;
this module lets the tests check that the node measures and pays that time at worker start.
"""

from __future__ import annotations

import time

from tests.support.hu_threshold import HUThreshold

IMPORT_SECONDS = 1.5
time.sleep(IMPORT_SECONDS)


class SlowImportThreshold(HUThreshold):
    pass
