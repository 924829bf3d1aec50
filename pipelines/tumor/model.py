"""The segmentation network: MONAI SegResNet as in the model-zoo ``brats_mri_segmentation`` bundle.

Four input channels (T1c, T1, T2, FLAIR), three sigmoid outputs (tumor core, whole tumor,
enhancing tumor). The shipped reference model is the same architecture made small
(``init_filters`` 8 instead of 16) so that it trains on a CPU within a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import SegResNet


@dataclass(frozen=True)
class Architecture:
    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.0

    @classmethod
    def from_params(cls, table: Mapping[str, Any]) -> Architecture:
        return cls(
            init_filters=int(table.get("init_filters", cls.init_filters)),
            blocks_down=tuple(int(v) for v in table.get("blocks_down", cls.blocks_down)),
            blocks_up=tuple(int(v) for v in table.get("blocks_up", cls.blocks_up)),
            dropout=float(table.get("dropout", cls.dropout)),
        )

    def as_params(self) -> dict[str, Any]:
        return {"init_filters": self.init_filters, "blocks_down": list(self.blocks_down),
                "blocks_up": list(self.blocks_up), "dropout": self.dropout}

    def build(self) -> torch.nn.Module:
        return SegResNet(
            spatial_dims=3, in_channels=4, out_channels=3, init_filters=self.init_filters,
            blocks_down=self.blocks_down, blocks_up=self.blocks_up,
            dropout_prob=self.dropout or None,
        )
