"""Running: job attempts executed by worker processes or Ray actors, outcomes in the index.

``executor`` is the one interface the node's scheduler sees; ``engine`` picks the local
(``worker``) or Ray (``ray_executor``, ``ray_actor``, ``ray_probe``) implementation. Both load
and call pipelines the same way (``invoke``), talk to their supervisor through ``child``, and
record an attempt's outcome through ``outcome``, fenced by attempt number.
"""
