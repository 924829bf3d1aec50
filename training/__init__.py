"""Training, evaluation and experiment records of the shipped models; never installed, never imported by the node.

Each pipeline's own training code, its ``LOG.md`` and its experiment records live in
``training/<name>/``; the modules here are what they, the tests and the benchmarks share. Run it
from a checkout's root (``python -m training.denoise.train --help``). Inference modules import
none of it (``tests/pipelines/test_inference_imports.py`` keeps it so), which is why a node can be
installed without the training-only extras.
"""
