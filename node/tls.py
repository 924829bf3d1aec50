"""DICOM TLS (PS3.15 Annex B): its settings in config.toml, and the SSL contexts of the
receiver, the web page and the dispatcher.

Verification is never optional towards a destination: results carry patient data, and a TLS
connection to a peer whose certificate is not checked protects nothing. The receiver asks for a
client certificate only when ``ca_file`` is set, because many modalities cannot present one.
"""

from __future__ import annotations

import ssl
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTls(_Strict):
    """DICOM TLS on the receiver: every association must then be TLS."""

    cert_file: FilePath
    key_file: FilePath
    ca_file: FilePath | None = Field(
        default=None, description="when set, callers must present a certificate this CA signed"
    )


class ClientTls(_Strict):
    """DICOM TLS to a destination. The peer's certificate is always verified against ca_file."""

    ca_file: FilePath
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _key_with_cert(self) -> ClientTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (our certificate and its key)")
        return self


def server_context(settings: ServerTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as dcmtk's default profile
    context.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.ca_file is not None:
        context.load_verify_locations(settings.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: ClientTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.check_hostname
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


def certificate_name(certificate: dict[str, Any] | None) -> str | None:
    """The common name of a verified client certificate (its whole subject when it has none)."""
    if not certificate or not certificate.get("subject"):
        return None
    fields = [pair for rdn in certificate["subject"] for pair in rdn]
    common = [value for key, value in fields if key == "commonName"]
    return common[0] if common else ",".join(f"{key}={value}" for key, value in fields)
