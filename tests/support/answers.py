"""Reading the command line's answers as structure: which words, routes and states appear.

The tests check what an administrator relies on (exit code, the id or key named, a route's
verdict), so rewording a sentence breaks no test."""

from __future__ import annotations

import re


def words(text: str) -> set[str]:
    """The words, numbers, UIDs and keys of an answer (punctuation around them dropped)."""
    return {w.strip(".") for w in re.findall(r"[\w.-]+", text)}


def route_verdicts(stdout: str) -> dict[str, str]:
    """``route-test``'s lines under a series: route -> "MATCH", or the conditions it failed."""
    found = (re.fullmatch(r"\s+(MATCH|no match)\s+([\w-]+):?\s*(.*)", line) for line in stdout.splitlines())
    return {m[2]: "MATCH" if m[1] == "MATCH" else m[3] for m in found if m}
