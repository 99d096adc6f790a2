"""TLS for the gRPC and HTTP doors from certificate files, reloaded when the files change.

gRPC uses dynamic server credentials: at each new handshake gRPC asks `GrpcTls` whether the
certificate changed (one stat of each file), and serves the new one from then on. uvicorn has one
`ssl.SSLContext`; `HttpTls.reload_if_changed` (the HTTP server calls it every second) loads changed
files into that live context, which new handshakes use. A client CA bundle can only be added to
a live context, so a CA removed from the bundle stays trusted by HTTP until a restart.

Files are read whole and checked (the key must match the certificate) before either door uses
them: a rotation caught half-written keeps the last good certificate, with a warning, until the
files change again. With `security.tls_client_ca_file` both doors require and verify a client
certificate (mutual TLS).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from orpheus_tts.api.access import file_signature
from orpheus_tts.config import ConfigError, SecurityConfig

log = logging.getLogger("orpheus_tts.tls")

RELOAD_POLL_S = 1.0  # how often the HTTP server looks at its certificate files


@dataclass(frozen=True)
class Certificates:
    """One consistent set of PEM files' contents."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    def check(self) -> None:
        """Raise ssl.SSLError (or ValueError) unless the key matches the certificate and the CA parses."""
        build_context(self)


def build_context(certs: Certificates, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """A server context holding `certs` (or `certs` loaded into `context`, live)."""
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="orpheus-tls-") as scratch:  # load_cert_chain reads files only
        cert, key = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
        cert.write_bytes(certs.cert)
        key.touch(0o600)
        key.write_bytes(certs.key)
        context.load_cert_chain(cert, key)
    if certs.client_ca is not None:
        context.load_verify_locations(cadata=certs.client_ca.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class CertificateFiles:
    """The certificate, key and client CA files, and whether they changed since last read."""

    def __init__(self, config: SecurityConfig):
        self.paths = (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        self._seen = self._signatures()
        try:
            self.current = self._read()
            self.current.check()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"security.tls_cert_file / tls_key_file / tls_client_ca_file: {exc}") from None

    def _signatures(self) -> tuple:
        return tuple(file_signature(p) if p else None for p in self.paths)

    def _read(self) -> Certificates:
        cert, key, ca = self.paths
        return Certificates(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes() if ca else None)

    def reload(self) -> Certificates | None:
        """New certificates when the files changed and hold a consistent set, else None."""
        seen = self._signatures()
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            certs = self._read()
            certs.check()
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.warning("TLS files changed but cannot be used (%s): keeping the last good certificate", exc)
            return None
        if certs == self.current:
            return None
        self.current = certs
        log.info("TLS certificate read again from %s", self.paths[0])
        return certs


class GrpcTls:
    """Server credentials whose certificate follows the files."""

    def __init__(self, config: SecurityConfig):
        self.files = CertificateFiles(config)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(self.files.current), self._fetch,
            require_client_authentication=self.files.current.client_ca is not None)

    def _fetch(self):
        """Called by gRPC at each new handshake: None keeps the certificate it has."""
        try:
            certs = self.files.reload()
        except Exception:  # an exception here would fail the handshake inside gRPC's core
            log.exception("TLS reload failed")
            return None
        return None if certs is None else _grpc_configuration(certs)


def _grpc_configuration(certs: Certificates):
    return grpc.ssl_server_certificate_configuration([(certs.key, certs.cert)], root_certificates=certs.client_ca)


class HttpTls:
    """uvicorn's SSL context, and the files it is reloaded from."""

    def __init__(self, config: SecurityConfig):
        self.files = CertificateFiles(config)
        self.context = build_context(self.files.current)

    def reload_if_changed(self) -> bool:
        certs = self.files.reload()
        if certs is None:
            return False
        try:
            build_context(certs, self.context)
        except (OSError, ssl.SSLError) as exc:  # checked already: only the scratch files could fail
            log.warning("TLS certificate not reloaded for HTTP: %s", exc)
            return False
        return True
