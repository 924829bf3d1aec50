"""Running: job attempts executed by worker processes or Ray actors, outcomes in the index.

``scheduler`` claims jobs and enforces timeouts through ``executor``, the one interface it
drives; ``engine`` picks the local (``worker``) or Ray (``ray_executor``, ``ray_actor``,
``ray_probe``) implementation. Both load and call pipelines the same way (``invoke``), talk to
the node through ``child``, and commit an attempt's outcome through ``outcome``, fenced by
attempt number, after ``lineage`` marks a result that replaces an earlier one.
"""
