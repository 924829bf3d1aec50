"""Training, evaluation, noise simulation and data preparation of the CT denoiser; inference never imports it."""
