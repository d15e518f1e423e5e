"""Downloads for model updates: the manifest by conditional GET, release files with resume, size and hash checks.

Only ``https://`` is fetched and the server is always verified (``ota.ca_file``, else the system's CAs);
a client certificate is presented where the server asks for one (mTLS). Every failure is a ``FetchError``
whose ``kind`` says what went wrong, so the caller can tell "retry later" (network, http) from "fix the
configuration" (tls, space) from "the release itself is bad" (size, hash).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

import httpx

from agent.errors import OtaError
from agent.ota.faults import crashpoint

log = logging.getLogger(__name__)

FetchKind = Literal["network", "http", "tls", "size", "hash", "space"]

_HASH_BLOCK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Verification codes of OpenSSL (X509_V_ERR_*) that have a more useful hint than "check ota.ca_file".
_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED, _HOSTNAME_MISMATCH = 9, 10, 62


class FetchError(OtaError):
    """A fetch failed; ``kind`` is one of network, http, tls, size, hash, space."""

    def __init__(self, message: str, kind: FetchKind) -> None:
        super().__init__(message)
        self.kind: FetchKind = kind


@dataclass(frozen=True)
class Tls:
    """Whom to trust (``ca_file``; None: the system's CAs) and what to present (a client certificate, for mTLS)."""

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


_SYSTEM_TLS = Tls()


class Fetcher:
    """One HTTPS client for manifest checks and file downloads; close it (or use it as a context manager)."""

    def __init__(self, tls: Tls = _SYSTEM_TLS, timeout_s: float = 30.0) -> None:
        self._client = httpx.Client(
            verify=_ssl_context(tls),
            timeout=timeout_s,
            follow_redirects=True,  # static hosts (object stores, release pages) often redirect to the bytes
            # Sizes, hashes and Range offsets are about the stored bytes, so ask for them unencoded.
            headers={"Accept-Encoding": "identity"},
            event_hooks={"request": [_refuse_plain_redirect]},
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def manifest(
        self, url: str, etag: str | None = None, max_bytes: int = 256 * 1024
    ) -> tuple[bytes | None, str | None]:
        """The manifest's bytes and ETag; ``(None, etag)`` when the server says it has not changed (304)."""
        _require_https(url)
        headers = {"If-None-Match": etag} if etag else {}
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code == 304:
                    return None, response.headers.get("etag", etag)
                _require_status(response, url, 200)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(
                            f"{url} is larger than {max_bytes} bytes, too large for a manifest; refused "
                            "(raise ota.max_manifest_bytes if the release really needs it)",
                            "size",
                        )
                return bytes(body), response.headers.get("etag")
        except httpx.HTTPError as exc:
            raise _network_error(exc, url) from exc

    def download(
        self,
        url: str,
        dest: Path,
        size: int,
        sha256: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Fetch ``url`` into ``dest`` (resuming a ``.part`` left by an earlier try); the bytes received now.

        ``progress(held, size)`` is called after every chunk written. ``dest`` appears only complete and verified.
        """
        _require_https(url)
        folder = dest.parent
        part = folder / (dest.name + ".part")
        with _writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            held = _size_of(part)
            if held > size:  # not a prefix of this file: the declared size has changed since
                part.unlink()
                held = 0
        received = self._receive(url, part, held, size, progress) if held < size else 0
        _finish(part, dest, sha256)
        log.info("downloaded %s: %d bytes (%d of them this time)", dest, size, received)
        return received

    def _receive(self, url: str, part: Path, held: int, size: int, progress: Callable[[int, int], None] | None) -> int:
        headers = {"Range": f"bytes={held}-"} if held else {}
        received = 0
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and held:
                    # The server's file is shorter than what we hold: the .part is of another file; start over.
                    log.warning("%s: the server refused to resume at byte %d; downloading it again", url, held)
                    response.close()  # before the next request, so that it does not need a second connection
                    part.unlink()
                    return self._receive(url, part, 0, size, progress)
                if response.status_code == 206 and held:
                    _check_content_range(response, url, part, held, size)
                else:
                    _require_status(response, url, 200)
                    held = 0  # a 200 to a Range request is the whole file: the server cannot resume
                with part.open("ab" if held else "wb") as f:
                    for chunk in response.iter_bytes():  # no chunk_size: a chunker would drop bytes held at a cut
                        if held + len(chunk) > size:
                            part.unlink()
                            raise FetchError(
                                f"{url} sent more than the {size} bytes the manifest declares; refused and discarded "
                                "(the release on the server does not match its manifest: publish it again)",
                                "size",
                            )
                        f.write(chunk)
                        if not received:
                            f.flush()  # so that a kill here leaves these bytes in the .part for the resume tests
                            crashpoint("download")
                        held += len(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(held, size)
        except httpx.HTTPError as exc:
            raise _network_error(exc, url) from exc
        except OSError as exc:
            raise _space_error(part.parent, exc) from exc
        if held < size:
            raise FetchError(
                f"{url} ended after {held} of {size} bytes; the next attempt resumes from there", "network"
            )
        return received


def file_url(manifest_url: str, name: str) -> str:
    """The URL of a release file, which lives beside the manifest."""
    return urljoin(manifest_url, quote(name, safe=""))


def _ssl_context(tls: Tls) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except OSError as exc:
        raise FetchError(
            f"cannot load the CA bundle {tls.ca_file}: {_reason(exc)}; "
            "set ota.ca_file to a PEM file of CA certificates",
            "tls",
        ) from exc
    if tls.client_key is not None and tls.client_cert is None:
        raise FetchError("ota.client_key is set without ota.client_cert; set both or neither", "tls")
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key)
        except OSError as exc:
            raise FetchError(
                f"cannot load the client certificate {tls.client_cert} (key {tls.client_key}): {_reason(exc)}; "
                "check ota.client_cert and ota.client_key (PEM, unencrypted, a matching pair)",
                "tls",
            ) from exc
    return context


def _require_https(url: str) -> None:
    if urlsplit(url).scheme.lower() != "https":
        raise FetchError(
            f"refusing {url!r}: releases are only fetched over https:// with a verified server; fix ota.manifest_url",
            "tls",
        )


def _refuse_plain_redirect(request: httpx.Request) -> None:
    if request.url.scheme != "https":
        raise FetchError(
            f"the server redirected to {request.url}, which is not https://; refused (fix the server's redirect)",
            "tls",
        )


def _require_status(response: httpx.Response, url: str, status: int) -> None:
    if response.status_code != status:
        raise FetchError(
            f"GET {url}: HTTP {response.status_code} {response.reason_phrase}; "
            "check that the release is published at that address",
            "http",
        )


def _check_content_range(response: httpx.Response, url: str, part: Path, held: int, size: int) -> None:
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None or int(match[1]) != held:
        raise FetchError(
            f"{url} answered a request for bytes {held}- with Content-Range "
            f"{response.headers.get('content-range')!r}; the server's range support is broken",
            "http",
        )
    if match[3] != "*" and int(match[3]) != size:
        part.unlink()
        raise FetchError(
            f"{url} is {match[3]} bytes on the server but {size} in the manifest; publish the release again", "size"
        )


def _finish(part: Path, dest: Path, sha256: str) -> None:
    with _writing(dest.parent):
        digest = hashlib.sha256()
        with part.open("rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
            os.fsync(f.fileno())  # the bytes must be on disk before the rename makes them the file
        if digest.hexdigest() != sha256.lower():
            part.unlink()
            raise FetchError(
                f"{dest.name}: sha256 {digest.hexdigest()} does not match the manifest's {sha256.lower()}; "
                "discarded (the file on the server is corrupt or was replaced: publish the release again)",
                "hash",
            )
        part.replace(dest)
        _fsync_dir(dest.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Turn a local OSError into FetchError("space") naming the folder."""
    try:
        yield
    except OSError as exc:
        raise _space_error(folder, exc) from exc


def _space_error(folder: Path, exc: OSError) -> FetchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space there"
    elif exc.errno == errno.EROFS:
        hint = "it is on a read-only file system; point the agent's state directory at a writable one"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "the agent may not write there; fix the folder's owner or permissions"
    else:
        hint = "check that folder"
    return FetchError(f"cannot write the download in {folder}: {_reason(exc)}; {hint}", "space")


def _network_error(exc: httpx.HTTPError, url: str) -> FetchError:
    """Map an httpx failure to a FetchError, looking through its causes for the TLS error behind it."""
    host = urlsplit(url).netloc
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _verify_error(cause, host)
        if isinstance(cause, ssl.SSLError) and not isinstance(
            cause,
            (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError),  # a dropped connection, not TLS
        ):
            return _handshake_error(cause, host)
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"{host} did not answer in time ({type(exc).__name__}); check the network", "network")
    if isinstance(exc, httpx.ConnectError):
        return FetchError(
            f"cannot connect to {host}: {_reason(exc)}; check the network and the host in ota.manifest_url", "network"
        )
    if isinstance(exc, httpx.TransportError):
        return FetchError(
            f"the connection to {host} broke off: {_reason(exc)}; the next attempt picks up from there", "network"
        )
    return FetchError(f"GET {url}: {_reason(exc)}", "http")  # too many redirects, undecodable body


def _verify_error(exc: ssl.SSLCertVerificationError, host: str) -> FetchError:
    what = exc.verify_message or _reason(exc)
    if exc.verify_code == _HOSTNAME_MISMATCH:
        hint = "use the host name the certificate was issued for in ota.manifest_url, or reissue the certificate"
        return FetchError(f"the certificate of {host} is not valid for that name ({what}); {hint}", "tls")
    if exc.verify_code in (_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED):
        hint = "check the device's clock, and renew the certificate if it has expired"
        return FetchError(f"certificate verify failed for {host}: {what}; {hint}", "tls")
    hint = "check ota.ca_file: it must hold the CA that signed the server's certificate"
    return FetchError(f"certificate verify failed for {host}: {what}; {hint}", "tls")


def _handshake_error(exc: ssl.SSLError, host: str) -> FetchError:
    reason = str(exc.reason or exc)
    if "CERTIFICATE_REQUIRED" in reason:
        hint = "the server requires a client certificate: set ota.client_cert and ota.client_key"
    elif "ALERT" in reason:
        hint = "the server refused the connection; if it checks client certificates, check ota.client_cert"
    else:
        hint = "check that the server speaks TLS 1.2 or later"
    return FetchError(f"TLS handshake with {host} failed ({reason}); {hint}", "tls")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _reason(exc: BaseException) -> str:
    """The innermost message: httpx wraps "[Errno 111] Connection refused" two levels deep."""
    messages = [str(e) for e in _causes(exc) if str(e)]
    text = messages[-1] if messages else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
