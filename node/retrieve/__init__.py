"""Query/retrieve from a PACS: C-FIND for studies, C-MOVE them to the node's own receiver, and
the backfill loop that does both for what a site asked (``radnode backfill``)."""
