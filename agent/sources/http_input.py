"""A local HTTP endpoint where programs POST an input and get its result back in the response."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from agent.errors import SourceError
from agent.schema import Section
from agent.sources.base import Frame, note_bad
from agent.sources.pacing import Pacer
from agent.sources.payloads import BadPayload, decode_image, decode_npy, json_tensor, parse_json

log = logging.getLogger(__name__)

POLL_S = 0.2  # how long the server waits for a request before looking at the stop flag again
DRAIN_BYTES = 1024 * 1024  # an oversized body up to this is read and discarded before it is refused
READ_TIMEOUT_S = 30.0  # a client that stops sending its body mid-way does not hold a thread for ever
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})
JSON_TYPES = frozenset({"application/json"})
NPY_TYPES = frozenset({"application/octet-stream", "application/x-npy"})


class HttpInputSource(Section):
    type: Literal["http"] = Field(
        description="A local HTTP endpoint: POST an image, JSON numbers or a .npy tensor, get the result back."
    )
    host: str = Field(
        "127.0.0.1", description="Address to listen on; 0.0.0.0 opens it to the network (no authentication)."
    )
    port: int = Field(ge=1, le=65535, description="TCP port to listen on.")
    path: str = Field("/infer", pattern=r"^/", description="URL path that takes the POSTs; others answer 404.")
    timeout_s: float = Field(
        10.0, gt=0, description="Seconds a request waits for its result before it is answered 504."
    )
    max_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest body accepted; larger ones answer 413.")
    rate_hz: float = Field(
        0.0, ge=0, description="At most this many requests per second (later ones answer 429); 0: no limit."
    )


class PendingReply:
    """The answer to one request, carried in its Frame's ``meta["reply"]``: the pipeline calls ``resolve``
    with the result, or ``fail``; the first call wins and later ones are ignored. Thread-safe."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.status = HTTPStatus.OK.value
        self._lock = threading.Lock()

    def resolve(self, result: Mapping[str, Any]) -> None:
        """The result JSON that the request is answered with (200)."""
        with self._lock:
            if not self.done.is_set():
                self.result = dict(result)
                self.done.set()

    def fail(self, message: str, status: int = HTTPStatus.INTERNAL_SERVER_ERROR.value) -> None:
        """No result: the request is answered ``status`` (e.g. 422 for an input the model cannot take) with
        ``{"error": message}``."""
        with self._lock:
            if not self.done.is_set():
                self.error = message
                self.status = status
                self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)


class HttpInputRunner:
    """Runs in its own thread: serves the endpoint; each request is handled in a thread of its own, which
    emits one Frame and waits for its reply. The port is bound here, so that a taken port fails at start."""

    def __init__(self, cfg: HttpInputSource, emit: Callable[[Frame], None], stop: threading.Event) -> None:
        self.cfg = cfg
        self.emit = emit
        self.stop = stop
        self.bad_inputs = 0
        self.rate_hz = cfg.rate_hz  # changed at run time by the pipeline-rate command
        self._lock = threading.Lock()  # counters, pending replies
        self._emit_lock = threading.Lock()  # one emit at a time, as from any other source
        self._pacer = Pacer(stop)
        self._warned: set[str] = set()
        self._pending: set[PendingReply] = set()
        try:
            self.server = ThreadingHTTPServer((cfg.host, cfg.port), _handler(self))
        except OSError as exc:
            raise SourceError(
                f"http input cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}): choose another port"
            ) from None
        self.server.daemon_threads = True  # a slow client must not hold up the agent's stop
        self.server.timeout = POLL_S

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{self.cfg.path}"

    def restart(self) -> None:
        """Nothing to start over: each request stands alone."""

    def run(self) -> None:
        log.info("http input listening on %s", self.url)
        try:
            while not self.stop.is_set():
                self.server.handle_request()
        finally:
            self.server.server_close()
            with self._lock:
                pending = list(self._pending)
            for reply in pending:
                reply.fail("the agent is stopping", HTTPStatus.SERVICE_UNAVAILABLE.value)

    # ---- request threads -----------------------------------------------------------------------

    def frame(self, content_type: str, body: bytes, client: str) -> Frame:
        """The frame of one request body; BadPayload when it is malformed."""
        now = time.time()
        origin = f"http {client}"
        if content_type in IMAGE_TYPES:
            pixels = decode_image(body)  # (H, W, 3)
            return Frame(pixels, now, origin, meta={"width": pixels.shape[1], "height": pixels.shape[0]})
        if content_type in JSON_TYPES:
            return Frame(json_tensor(parse_json(body)), now, origin, is_tensor=True)
        if content_type in NPY_TYPES:
            return Frame(decode_npy(body), now, origin, is_tensor=True)
        accepted = ", ".join(sorted(IMAGE_TYPES | JSON_TYPES | NPY_TYPES))
        raise BadPayload("unsupported Content-Type", f"{content_type or 'none'}; send one of {accepted}")

    def count_bad(self, exc: BadPayload, client: str) -> None:
        with self._lock:
            self.bad_inputs += 1
            note_bad(exc, f"http input from {client}", self._warned)

    def submit(self, frame: Frame) -> PendingReply | None:
        """Hand the frame over with a reply attached; None when it is refused (stopping, over the rate)."""
        reply = PendingReply()
        with self._emit_lock:
            if self.stop.is_set() or not self._pacer.due(self.rate_hz):
                return None
            with self._lock:
                self._pending.add(reply)
            self.emit(Frame(frame.data, frame.ts, frame.origin, frame.is_tensor, {**frame.meta, "reply": reply}))
        return reply

    def forget(self, reply: PendingReply) -> None:
        with self._lock:
            self._pending.discard(reply)


def _handler(runner: HttpInputRunner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S
        server_version = "edge-agent"

        def do_POST(self) -> None:
            if not self._on_path():
                return
            started = time.monotonic()
            client = self.client_address[0]
            body = self._body()
            if body is None:
                return
            content_type = self.headers.get_content_type() if "Content-Type" in self.headers else ""
            try:
                frame = runner.frame(content_type, body, client)
            except BadPayload as exc:
                runner.count_bad(exc, client)
                status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE if exc.kind == "unsupported Content-Type" else None
                self._error(status or HTTPStatus.BAD_REQUEST, f"{exc.kind}: {exc}")
                return
            reply = runner.submit(frame)
            if reply is None:
                if runner.stop.is_set():
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the agent is stopping")
                else:
                    self._error(HTTPStatus.TOO_MANY_REQUESTS, f"over {runner.rate_hz:g} requests per second")
                return
            try:
                left = runner.cfg.timeout_s - (time.monotonic() - started)
                if not reply.wait(max(0.0, left)):
                    self._error(HTTPStatus.GATEWAY_TIMEOUT, f"no result within {runner.cfg.timeout_s:g} s")
                elif reply.error is not None:
                    self._error(reply.status, reply.error)
                else:
                    self._answer(HTTPStatus.OK, reply.result or {})
            finally:
                runner.forget(reply)

        def do_GET(self) -> None:
            self._not_allowed()

        def do_PUT(self) -> None:
            self._not_allowed()

        def do_DELETE(self) -> None:
            self._not_allowed()

        def do_PATCH(self) -> None:
            self._not_allowed()

        def _not_allowed(self) -> None:
            if self._on_path():
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed: POST an input")

        def _on_path(self) -> bool:
            if urlsplit(self.path).path == runner.cfg.path:
                return True
            self._error(HTTPStatus.NOT_FOUND, f"nothing at {urlsplit(self.path).path}: POST to {runner.cfg.path}")
            return False

        def _body(self) -> bytes | None:
            """The request body; None when the request was answered already (too large, no length) or cannot be."""
            length_header = self.headers.get("Content-Length")
            if length_header is None:
                self._error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
                return None
            try:
                length = int(length_header)
                if length < 0:
                    raise ValueError
            except ValueError:
                self._error(HTTPStatus.BAD_REQUEST, f"Content-Length {length_header[:20]!r} is not a size")
                return None
            if length > runner.cfg.max_bytes:
                if length <= DRAIN_BYTES:  # read it, so that the client gets the answer rather than a reset
                    self.rfile.read(length)
                self._error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over {runner.cfg.max_bytes}"
                )
                return None
            body = self.rfile.read(length)
            return body if len(body) == length else None  # the client went away mid-body: nobody to answer

        def _error(self, status: int, message: str) -> None:
            log.debug("http input: %d %s", status, message)
            self._answer(status, {"error": message})

        def _answer(self, status: int, content: Mapping[str, Any]) -> None:
            try:
                data = json.dumps(content).encode()
            except (TypeError, ValueError) as exc:
                status, data = (
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    json.dumps({"error": f"result is not JSON: {exc}"}).encode(),
                )
            self.send_response(status)
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", "POST")
            self.send_header("Connection", "close")  # one request a connection (HTTP/1.0), unread bodies included
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http input: " + format, *args)

    return Handler
