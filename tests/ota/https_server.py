"""A real HTTPS release server for the OTA tests: a test-generated CA, loopback, a request log and faults.

``make_pki`` writes a CA, a server certificate and a client certificate (for mTLS) with ``cryptography``.
``ReleaseServer`` serves a folder the way a static host does (GET/HEAD, single byte ranges, ETag and
If-None-Match) and can be told to misbehave per path: cut a body short, pad it, serve other bytes, or answer
with an error status. ``stop()`` then ``start()`` brings it back on the same port ("server down and back").
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_WRITE_BLOCK = 16 * 1024
_SOCKET_TIMEOUT_S = 30.0  # a backstop against a test that leaves a connection open; never reached when all is well
_IDLE_TIMEOUT_S = 10.0


@dataclass
class Pki:
    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(
    folder: Path, hostnames: Sequence[str] = ("localhost", "127.0.0.1"), ca_name: str = "edge-agent test CA"
) -> Pki:
    """A CA and, signed by it, a server certificate for ``hostnames`` and a client certificate, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name_x509 = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        _builder(ca_name_x509, ca_name_x509, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, names: Sequence[str]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, ca_name_x509, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    pki = Pki(
        folder=folder,
        ca_cert=folder / "ca.pem",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.ca_key, _key_pem(ca_key))
    server_pem, server_key = leaf(hostnames[0] if hostnames else "server", ExtendedKeyUsageOID.SERVER_AUTH, hostnames)
    pki.server_cert.write_bytes(server_pem)
    _write_key(pki.server_key, server_key)
    client_pem, client_key = leaf("edge-agent test device", ExtendedKeyUsageOID.CLIENT_AUTH, ())
    pki.client_cert.write_bytes(client_pem)
    _write_key(pki.client_key, client_key)
    return pki


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_key(path: Path, pem: bytes) -> None:
    path.write_bytes(pem)
    path.chmod(0o600)


@dataclass(frozen=True)
class Request:
    """One HTTP request the server answered; ``bytes_sent`` counts body bytes only."""

    path: str  # relative to the served root, as in url(): "model.onnx"
    range_header: str | None
    status: int
    bytes_sent: int
    method: str = "GET"
    if_none_match: str | None = None


@dataclass(frozen=True)
class _Faults:
    cut_after: int | None = None
    pad: bytes = b""
    data: bytes | None = None
    status: int | None = None
    ignore_range: bool = False


@dataclass
class _Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut_after: int | None = None


class ReleaseServer:
    """HTTPS on 127.0.0.1 serving ``root``; a context manager that starts and stops it."""

    def __init__(self, root: Path, pki: Pki, port: int = 0, require_client_cert: bool = False) -> None:
        self.root = root
        self.pki = pki
        self.port = port
        self.require_client_cert = require_client_cert
        self.tls_failures: list[str] = []  # handshakes the server refused or the client abandoned
        self._log: list[Request] = []
        self._faults: dict[str, _Faults] = {}
        self._cond = threading.Condition()
        self._in_flight = 0
        self._connections: set[ssl.SSLSocket] = set()
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> ReleaseServer:
        if self._server is not None:
            raise RuntimeError("the release server is already running")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.pki.ca_cert)
        server = _Server(("127.0.0.1", self.port), self, context)
        self.port = server.server_address[1]  # the same port on the next start: "down and back"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name=f"release-server:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new connections and drop the open ones (also kept-alive idle ones), then join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()  # serve_forever returns: nothing more is accepted
        with self._cond:
            self._closing = True
            connections = list(self._connections)
        for conn in connections:
            # The plain socket's shutdown: SSLSocket.shutdown would drop the TLS state under the handler's feet.
            with suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        server.server_close()  # joins the handler threads (daemon_threads is off)
        thread.join()
        self._server = self._thread = None
        with self._cond:
            self._closing = False

    def __enter__(self) -> ReleaseServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, name: str = "") -> str:
        return f"https://localhost:{self.port}/{name}"

    # -- the log

    @property
    def requests(self) -> list[Request]:
        """The requests answered so far, once none is in progress.

        A client's call returns as soon as it has the response (or the cut), possibly before the handler has
        written its log entry; waiting here until no handler is busy makes the log complete for that call.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_flight == 0, timeout=_IDLE_TIMEOUT_S):
                raise AssertionError("the release server is still busy with a request")
            return list(self._log)

    # -- faults, per path (as in url(): "model.onnx"); each lasts until clear()

    def cut_after(self, path: str, n: int) -> None:
        """Send the headers (with the full Content-Length) and ``n`` body bytes, then drop the connection."""
        self._set_fault(path, cut_after=n)

    def pad(self, path: str, extra: bytes) -> None:
        """Serve ``extra`` bytes past the end of the file; Content-Length includes them."""
        self._set_fault(path, pad=extra)

    def replace(self, path: str, data: bytes) -> None:
        """Serve ``data`` instead of the file (the ETag follows the data)."""
        self._set_fault(path, data=data)

    def status(self, path: str, code: int) -> None:
        """Answer every request for ``path`` with ``code`` and an empty body."""
        self._set_fault(path, status=code)

    def ignore_range(self, path: str) -> None:
        """Answer Range requests with the whole file (200), as servers without range support do."""
        self._set_fault(path, ignore_range=True)

    def clear(self, path: str | None = None) -> None:
        """Remove the faults of ``path``, or of every path."""
        with self._cond:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(path.lstrip("/"), None)

    def _set_fault(self, path: str, **changes: Any) -> None:
        key = path.lstrip("/")
        with self._cond:
            self._faults[key] = replace(self._faults.get(key, _Faults()), **changes)

    # -- used by the handler threads

    @contextmanager
    def _busy(self) -> Iterator[None]:
        with self._cond:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _track(self, conn: ssl.SSLSocket) -> bool:
        with self._cond:
            if self._closing:
                return False
            self._connections.add(conn)
            return True

    def _untrack(self, conn: ssl.SSLSocket) -> None:
        with self._cond:
            self._connections.discard(conn)

    def _record(self, request: Request) -> None:
        with self._cond:
            self._log.append(request)

    def _tls_failed(self, exc: Exception) -> None:
        with self._cond:
            self.tls_failures.append(str(exc))

    def _reply(self, name: str, range_header: str | None, if_none_match: str | None) -> _Reply:
        with self._cond:
            faults = self._faults.get(name, _Faults())
        if faults.status is not None:
            return _Reply(faults.status, {"Content-Length": "0"})
        if faults.data is not None:
            content = faults.data
        else:
            root = self.root.resolve()
            path = (root / name).resolve()
            if not name or not path.is_relative_to(root) or not path.is_file():
                return _Reply(404, {"Content-Length": "0"})
            content = path.read_bytes()
        etag = f'"{hashlib.sha256(content).hexdigest()}"'
        if if_none_match is not None and {"*", etag} & {tag.strip() for tag in if_none_match.split(",")}:
            return _Reply(304, {"ETag": etag})
        reply = _Reply(200, {"ETag": etag, "Accept-Ranges": "bytes"}, content, faults.cut_after)
        match = None if faults.ignore_range else _RANGE.match(range_header or "")
        if match is not None and (not match[2] or int(match[2]) >= int(match[1])):  # else ignored, as RFC 9110 says
            first = int(match[1])
            if first >= len(content):
                return _Reply(416, {"Content-Range": f"bytes */{len(content)}", "Content-Length": "0"})
            last = min(int(match[2]), len(content) - 1) if match[2] else len(content) - 1
            reply.status, reply.body = 206, content[first : last + 1]
            reply.headers["Content-Range"] = f"bytes {first}-{last}/{len(content)}"
        reply.body += faults.pad
        reply.headers["Content-Type"] = "application/octet-stream"
        reply.headers["Content-Length"] = str(len(reply.body))
        return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread: none outlives stop()

    def __init__(self, address: tuple[str, int], owner: ReleaseServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.context = context
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # HTTPServer's would look up the host's FQDN, which can stall without DNS
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so one slow client cannot stall accept().
        conn = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            if not self.owner._track(conn):
                return
            conn.settimeout(_SOCKET_TIMEOUT_S)
            # Busy from before the server's first handshake message until the failure is logged, so a client
            # that sees the refusal and then reads tls_failures finds it there.
            with self.owner._busy():
                try:
                    conn.do_handshake()
                    failed = False
                except OSError as exc:
                    self.owner._tls_failed(exc)
                    failed = True
            if failed:
                _linger_close(conn)
                return
            _Handler(conn, client_address, self)
        finally:
            self.owner._untrack(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("release server: connection from %s ended with an error", client_address, exc_info=True)


def _linger_close(conn: ssl.SSLSocket) -> None:
    """Send FIN and read until the client closes: closing with its request unread would send an RST, and the
    client could then lose the TLS alert that tells it why it was refused."""
    try:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and ranges, as real static hosts
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("release server: " + format, *args)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, *, send_body: bool) -> None:
        owner = self.server.owner
        with owner._busy():
            name = unquote(urlsplit(self.path).path).lstrip("/")
            range_header, if_none_match = self.headers.get("Range"), self.headers.get("If-None-Match")
            reply = owner._reply(name, range_header, if_none_match)
            body = reply.body if send_body else b""
            if reply.cut_after is not None:
                body = body[: reply.cut_after]
            sent = 0
            try:
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                for start in range(0, len(body), _WRITE_BLOCK):
                    sent += self.wfile.write(body[start : start + _WRITE_BLOCK]) or 0
            except OSError:
                self.close_connection = True  # the client went away (e.g. it refused a padded body)
            owner._record(Request(name, range_header, reply.status, sent, self.command, if_none_match))
            if reply.cut_after is not None:
                self.close_connection = True  # finish_request closes the socket without a TLS close_notify
