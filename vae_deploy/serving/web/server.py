"""A tiny threaded static server for a built site, on 127.0.0.1, used by the browser tests and
the latency measurement. ``isolated=True`` adds the COOP/COEP headers that make the page
cross-origin isolated, which onnxruntime-web needs to run WASM with several threads.
(``python -m http.server -d site`` serves the same site; without those headers it runs 1 thread.)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    isolated = False

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: tests and the bench read results, not access logs


@contextmanager
def serve_site(site: str | Path, *, isolated: bool = False, port: int = 0) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 (a free port by default) and yield its base URL."""
    handler = type("Handler", (_Handler,), {"isolated": isolated})
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(site)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="vae-deploy-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
