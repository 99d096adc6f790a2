"""Helpers of the security tests: certificates made on the spot, and a server with keys or TLS."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server_testkit import RunningServer


@dataclass
class Issued:
    """A certificate and its key, as PEM."""

    cert: bytes
    key: bytes
    _cert: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        cert_path.write_bytes(self.cert)
        if key_path is not None:
            key_path.write_bytes(self.key)


def _issue(name: str, issuer: Issued | None, *, ca: bool = False, server: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer._cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer._key if issuer else key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM),
                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), cert, key)


def make_ca(name: str) -> Issued:
    return _issue(name, None, ca=True)


def server_cert(ca: Issued, name: str = "orpheus-tts") -> Issued:
    return _issue(name, ca, server=True)


def client_cert(ca: Issued, name: str = "client") -> Issued:
    return _issue(name, ca)


class SecureServer(RunningServer):
    """A RunningServer with HTTP, its keys' environment given, https:// when the config has TLS."""

    def __init__(self, config, environ: dict[str, str] | None = None, idle_timeout_s: float = 5.0):
        from orpheus_tts.api.http import HttpSettings

        self.scheme = "https" if config.security.tls_cert_file else "http"
        super().__init__(config, http_port=0, http_settings=HttpSettings(idle_timeout_s=idle_timeout_s),
                         environ=environ or {})

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.http_port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.server.http_port}/v1/audio/stream"
