"""Delivering: results to the PACS with C-STORE or STOW-RS until it has them (``dispatcher``);
it sends the files it is given (their lineage was written in ``node.run.lineage``).
"""
