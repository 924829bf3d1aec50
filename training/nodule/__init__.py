"""Training, evaluation, data preparation and synthesis of the nodule detector; inference never imports it."""
