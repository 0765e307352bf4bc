"""A local HTTP server on 127.0.0.1 that serves a model file, with scripted faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    """What the server does: one entry per request (the last one repeats)."""

    body: bytes
    steps: list[str] = field(default_factory=lambda: ["ok"])
    delay_per_chunk: float = 0.0
    stall_seconds: float = 2.0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self) -> str:
        with self.lock:
            step = self.steps[min(self.requests, len(self.steps) - 1)]
            self.requests += 1
            return step


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            step = script.next_step()
            if step.isdigit():  # an HTTP status, e.g. "503" or "429"
                self.send_response(int(step))
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = script.body
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if step == "stall":  # send a little, then go quiet for longer than the client waits
                self.wfile.write(body[:1000])
                self.wfile.flush()
                time.sleep(script.stall_seconds)
                return
            if step == "cut":  # promise the whole body, send half, hang up
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.close()
                return
            for start in range(0, len(body), 65536):
                self.wfile.write(body[start : start + 65536])
                if script.delay_per_chunk:
                    time.sleep(script.delay_per_chunk)

    return Handler


@contextmanager
def serve(script: Script) -> Iterator[str]:
    """Serve ``script`` on 127.0.0.1; yields the model URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="model-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/models/model.onnx"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
