"""The four MR contrasts the tumor model reads, in the order of its input channels.

The order is the one of the MONAI model-zoo bundle ``brats_mri_segmentation`` (T1c, T1, T2,
FLAIR), so a site can drop that bundle in and feed it the same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

#: Input roles of the pipeline, in model channel order.
CHANNELS: tuple[str, ...] = ("t1c", "t1", "t2", "flair")
#: Contrasts the model is trained to work from on their own: every usable subset has one of them.
ANCHORS: tuple[str, ...] = ("t1c", "flair")
#: Reference contrast preference: the first present one gives the grid of the SEG. T1c first,
#: because enhancement is read on it and it is the series most often acquired thin (3D).
REFERENCE_ORDER: tuple[Literal["t1c", "flair"], ...] = ("t1c", "flair")

DESCRIPTIONS: dict[str, str] = {
    "t1c": "T1-weighted after gadolinium (contrast-enhanced)",
    "t1": "T1-weighted, native (no contrast)",
    "t2": "T2-weighted",
    "flair": "T2-FLAIR",
}


def choose_reference(present: Sequence[str], order: Sequence[str] = REFERENCE_ORDER) -> str:
    """The contrast whose grid the results are written on; ValueError if none of ``order`` is present."""
    for role in order:
        if role in present:
            return role
    raise ValueError(
        f"none of the contrasts {', '.join(order)} arrived (got {', '.join(present) or 'none'}); "
        "the model needs T1c or FLAIR"
    )

