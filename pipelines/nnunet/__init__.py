"""``nnunet-segmentation``: an nnU-Net v2 results folder run as nnU-Net runs it."""
