"""Credentials of an HTTP destination (a DICOMweb archive): read from a file, never written in
config.toml, which is shown, copied and logged more freely than a secret should be.

The file is read when the config is checked (a missing or malformed one stops the start with its
key named) and again for each batch of requests, so that a rotated token is used without a
restart.
"""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, FilePath, model_validator


class HttpAuth(BaseModel):
    """``basic``: the file holds ``user:password`` on one line; ``bearer``: the token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["basic", "bearer"]
    file: FilePath

    @model_validator(mode="after")
    def _readable(self) -> HttpAuth:
        self.header()
        return self

    def header(self) -> str:
        """The Authorization header's value; ValueError names what is wrong with the file."""
        try:
            secret = self.file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {self.file}: {error}") from None
        if not secret or "\n" in secret:
            raise ValueError(f"{self.file} must hold one line: "
                             + ("user:password" if self.type == "basic" else "the token"))
        if self.type == "bearer":
            return f"Bearer {secret}"
        if ":" not in secret:
            raise ValueError(f"{self.file} must hold user:password on one line (basic authentication)")
        return "Basic " + base64.b64encode(secret.encode()).decode()
