"""DICOM TLS (PS3.15 Annex B): the SSL contexts of the receiver and of the dispatcher.

Verification is never optional towards a destination: results carry patient data, and a TLS
connection to a peer whose certificate is not checked protects nothing. The receiver asks for a
client certificate only when ``ca_file`` is set, because many modalities cannot present one.
"""

from __future__ import annotations

import ssl

from node.config import ClientTls, ServerTls


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
