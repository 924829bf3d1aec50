"""Training, evaluation, data preparation and tumor synthesis for the tumor models.

Inference (``pipelines.tumor.pipeline`` and what it imports) never imports this package: the
node needs none of it, and none of its optional dependencies, to serve studies.
"""
