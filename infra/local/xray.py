"""A local stand-in for the X-Ray daemon: receives the SDK's UDP segment documents, counts and keeps them.

The SDK (through `AWS_XRAY_DAEMON_ADDRESS=127.0.0.1:PORT`) sends each segment or streamed subsegment as
one datagram: the header line `{"format": "json", "version": 1}`, a newline, then the document
(https://docs.aws.amazon.com/xray/latest/devguide/xray-api-sendingdata.html). In Lambda the
function's segment itself is written by the Lambda service; what the function sends are subsegments
whose parent is the function's facade segment (the `Parent` of `_X_AMZN_TRACE_ID`).

Standard library only: the local Lambda runtime imports this module, and its workers import the runtime.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

HEADER = b'{"format": "json", "version": 1}'
MAX_DATAGRAM = 65535


def new_trace_header(sampled: bool = True) -> str:
    """A fresh Lambda trace header: Root=1-<8 hex epoch seconds>-<24 hex>;Parent=<16 hex>;Sampled=1|0
    (https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader)."""
    root = f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"
    return f"Root={root};Parent={os.urandom(8).hex()};Sampled={1 if sampled else 0}"


def trace_root(header: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "Root":
            return value
    return None


def walk(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A document and every subsegment nested in it, depth first."""
    yield doc
    for child in doc.get("subsegments") or []:
        yield from walk(child)


class XRaySink:
    """Listens on a UDP port of 127.0.0.1 (0: any free one) in a thread; keeps the last `keep` documents."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: int = 20000) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._docs: deque[dict[str, Any]] = deque(maxlen=keep)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.datagrams = 0
        self.documents = 0
        self.subsegments = 0  # every subsegment, nested ones included
        self.faults = 0
        self.errors = 0
        self.malformed = 0

    @property
    def address(self) -> str:
        """The value for AWS_XRAY_DAEMON_ADDRESS."""
        return f"{self.host}:{self.port}"

    def start(self) -> XRaySink:
        """Bind (a free port if 0) and receive in a daemon thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((self.host, self.port))
        self.host, self.port = sock.getsockname()[:2]
        self._sock, self._stopping = sock, False
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="xray-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None or self._sock is None:
            return
        self._stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:  # unblocks recvfrom
            wake.sendto(b"", (self.host, self.port))
        self._thread.join(5)
        self._sock.close()
        self._sock, self._thread = None, None

    def __enter__(self) -> XRaySink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                data, _ = sock.recvfrom(MAX_DATAGRAM)
            except OSError:
                return
            if self._stopping:
                return
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        header, _, body = data.partition(b"\n")
        try:
            if json.loads(header) != json.loads(HEADER):
                raise ValueError("not an X-Ray daemon header")
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a segment document")
        except ValueError:
            with self._cond:
                self.datagrams += 1
                self.malformed += 1
            return
        entities = list(walk(doc))
        with self._cond:
            self.datagrams += 1
            self.documents += 1
            self.subsegments += sum(1 for e in entities if e.get("type") == "subsegment")
            self.faults += sum(1 for e in entities if e.get("fault"))
            self.errors += sum(1 for e in entities if e.get("error"))
            self._docs.append(doc)
            self._cond.notify_all()

    def docs(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        """The kept documents (of one trace if given), in the order they arrived."""
        with self._cond:
            return [d for d in self._docs if trace_id is None or d.get("trace_id") == trace_id]

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        *,
        trace_id: str | None = None,
        timeout: float = 10,
    ) -> list[dict[str, Any]]:
        """Block until `predicate(docs)` holds for the kept documents (of one trace); returns them.
        Raises TimeoutError with what arrived if it does not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                docs = [d for d in self._docs if trace_id is None or d.get("trace_id") == trace_id]
                if predicate(docs):
                    return docs
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(docs)} documents arrived, not what was awaited")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self._docs.clear()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "datagrams": self.datagrams,
                "documents": self.documents,
                "subsegments": self.subsegments,
                "faults": self.faults,
                "errors": self.errors,
                "malformed": self.malformed,
            }


def invocation_trace_header(upstream: str | None = None) -> str:
    """The `_X_AMZN_TRACE_ID` of one invocation: a new trace, or the caller's (an `X-Amzn-Trace-Id` on the
    Invoke request) continued with a new parent, as Lambda continues a caller's trace; sampled unless the
    caller decided otherwise (`Sampled=0`)."""
    if upstream:
        fields = dict(p.strip().partition("=")[::2] for p in upstream.split(";") if "=" in p)
        root = fields.get("Root")
        if root:
            sampled = "0" if fields.get("Sampled") == "0" else "1"
            return f"Root={root};Parent={os.urandom(8).hex()};Sampled={sampled}"
    return new_trace_header(sampled=True)
