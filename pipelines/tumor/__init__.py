"""Brain tumor segmentation of multi-contrast MR studies (``tumor-segmentation``)."""
