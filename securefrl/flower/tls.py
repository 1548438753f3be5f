"""Throwaway TLS material for a Flower deployment on one machine: a private CA and a SuperLink certificate.

For tests, benchmarks and trying the README's TLS command sequence on localhost, generated with the
``cryptography`` package (no ``openssl`` CLI needed). The CA key signs exactly one server certificate and is
then discarded: nothing else can ever be issued under this CA, so trusting ``ca.crt`` on a SuperNode trusts
only this SuperLink. For real machines use certificates from your organisation's CA; the server certificate
must name the address the SuperNodes dial (``hosts``).

Threat model: with TLS the link between a SuperNode and the SuperLink is confidential and the SuperNode
authenticates the SuperLink (a network attacker can neither read the protocol payloads' metadata nor
impersonate the server). Not covered: client authentication (Flower's SuperNode auth is separate), and the
SuperLink itself, which TLS does not stop from reading what reaches it -- that is what the secure aggregation
protocols are for.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: What the server certificate names when the caller gives nothing: the loopback addresses.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for ``flower-superlink --ssl-ca-certfile ca --ssl-certfile cert --ssl-keyfile key``."""

    ca: Path
    cert: Path
    key: Path


def _names(hosts: tuple[str, ...]) -> list[object]:
    from cryptography import x509

    out: list[object] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def write_tls_files(folder: str | Path, hosts: tuple[str, ...] = LOCAL_HOSTS, days: int = 2) -> TLSFiles:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` (P-256 ECDSA, valid ``days``) into ``folder``.

    Keys come from the OS CSPRNG (``cryptography``'s key generation); the server key file is created
    readable by its owner only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("the server certificate must name at least one host")
    folder = Path(folder).resolve()  # absolute: Flower's connection config wants an absolute root-certificates
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securefrl throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def peer_certificate(host: str, port: int, ca: str | Path, timeout: float = 5.0) -> dict[str, object]:
    """TLS handshake with ``host:port`` verifying against ``ca`` only; the server's certificate (raises if invalid).

    Shows that a listener really speaks TLS under this CA (a plaintext server fails the handshake).
    """
    import socket
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return dict(tls.getpeercert() or {})
