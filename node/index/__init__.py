"""The index: every piece of state that must survive a crash, in one SQLite file.

``store.Index`` is the one door; each concern (jobs, results and deliveries, bookkeeping,
retention) is a class over the same connection, the schema and its migrations are in ``db``,
and every state a series, job or delivery can be in, with the transitions allowed between them,
is a table in ``states``.
"""
