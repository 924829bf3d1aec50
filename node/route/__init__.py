"""Routing: which complete series or study goes to which pipeline, and where results go.

The condition language of config.toml's match tables (``matcher``), the routes by priority and
the jobs they make (``router``), and the study-level decisions: wait, run, or end naming the
missing inputs (``study``).
"""
