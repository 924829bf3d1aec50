"""CT denoising: a residual CNN trained on real CT with simulated dose reduction (``ct-denoise``)."""
