"""What the pipelines' training, evaluation, tests and benchmarks share; the node never imports it.

Each pipeline's own training code lives in ``pipelines/<name>/training/``. Inference modules
import none of it (``tests/test_inference_imports.py`` keeps it so), which is why a node can be
installed without the training-only extras.
"""
