"""Application instance certificates for the OPC UA adapter and its clients (`ssae adapter opcua-cert`).

OPC UA authenticates applications by X.509 certificates whose subjectAltName carries the application URI
(OPC 10000-4 6.1). This writes a self-signed one: NAME.der (the certificate, give it to the peer) and
NAME.pem (the private key, mode 0600, keep it). A site with its own CA signs certificates there instead
and copies the CA certificate into `trusted_clients`: the adapter trusts what that CA signed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import msgspec
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.errors import UserError
from edge.security import KEY_NAME, write_key_file  # the same name rule and atomic, no-overwrite write as the CURVE key files


class CertFiles(msgspec.Struct, frozen=True, kw_only=True):
    certificate: Path
    private_key: Path


def create_certificate(
    directory: Path,
    name: str,
    *,
    uri: str,
    role: Literal["server", "client"],
    host: str | None = None,
    days: int = 5 * 365,
    force: bool = False,
) -> CertFiles:
    """Write NAME.der and NAME.pem into `directory`; refuse to replace them unless `force`."""
    if not KEY_NAME.match(name):
        raise UserError(f"certificate name {name!r} may hold only letters, digits, '_', '-' and '.'; pick another --name")
    if ":" not in uri:
        raise UserError(f"--uri {uri!r} is not a URI; write it like urn:ssae:inspector (the server's application_uri)")
    host = host or socket.gethostname()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(certificate=directory / f"{name}.der", private_key=directory / f"{name}.pem")
    if not force:
        for path in (files.certificate, files.private_key):
            if path.exists():
                raise UserError(f"{path} exists; keep it, choose another --name, or pass --force to replace it")
    key = generate_private_key()
    use = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName(host)], extended=[use], days=days
    )
    # Key first: a crash between the two leaves no certificate without its key.
    write_key_file(files.private_key, dump_private_key_as_pem(key), mode=0o600, force=force)
    write_key_file(files.certificate, cert.public_bytes(Encoding.DER), mode=0o644, force=force)
    return files


def certificate_uris(cert: x509.Certificate) -> list[str]:
    """The application URIs a certificate names (its subjectAltName URIs)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
