"""How a file the node or a pipeline reads is refused: one line per problem, each naming its key.

config.toml (``node.config``) and a model folder's ``params.toml`` (``pipelines.model_folder``)
are both validated by pydantic models that refuse unknown keys. Both report in the same shape,
so an administrator who has fixed one file can read the other's complaint::

    /models/chest/params.toml is not valid:
      inference.report_treshold: unknown key (check its spelling and the table it is in)

It lives in pipelines/ because pipelines must not import the node; the node imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

#: what an unknown key is told: most are a misspelling or a key put under the wrong table
UNKNOWN_KEY = "unknown key (check its spelling and the table it is in)"
MISSING_KEY = "required key is missing"


def key_path(loc: Sequence[int | str]) -> str:
    """``routes[1].destinations`` from pydantic's location tuple, without its validator and
    union-member steps, which name no key a person wrote."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def problem_line(error: ErrorDetails, prefix: str = "") -> str:
    """``  <key>: <what is wrong>`` for one pydantic error, the key under ``prefix``."""
    message = error["msg"].removeprefix("Value error, ")
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        message = UNKNOWN_KEY
    elif error["type"] == "missing" and loc and isinstance(loc[-1], int):
        loc, message = loc[:-1], "too few values"  # a short list for a fixed count (roi = [96, 96])
    elif error["type"] == "missing":
        message = MISSING_KEY
    key = ".".join(part for part in (prefix, key_path(loc)) if part)
    return f"  {key or '(top level)'}: {message}"


def problem_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, each starting with the key it is about."""
    return [problem_line(err, prefix) for err in error.errors()]


def not_valid(source: str, lines: Sequence[str]) -> str:
    """The whole message: the file, then its problems."""
    return "\n".join([f"{source} is not valid:", *lines])
