"""A fault-injecting HTTP proxy on loopback, between a client and a server.

On a seeded fraction of requests it does one of: answer 503, answer 429,
drop the connection without an answer, reset the connection (RST), or delay
the answer (beyond the client's timeout with ``long_delay``); the other
requests are forwarded unchanged. Used by the tests of retries against the
fake and the real vLLM servers.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np

FAULTS = ("503", "429", "drop", "reset", "delay")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that timed out or a connection the proxy itself cut: part of the test, not an error.
        pass


class FaultProxy:
    """Forward ``http://127.0.0.1:<port>`` to ``upstream``, failing ``rate`` of the requests.

    Parameters
    ----------
    upstream : str
        The server's base URL.
    rate : float
        Fraction of requests that get a fault (drawn with ``seed``).
    faults : sequence of str
        Which faults to draw from (uniformly).
    delay : float
        Seconds of a "delay" fault (set it above the client's timeout to
        make the client time out).
    on_request : callable or None
        ``on_request(n)`` before forwarding the ``n``-th request (1-based);
        e.g. to kill the server mid-fit.
    """

    def __init__(self, upstream, *, rate=0.2, faults=FAULTS, seed=0, delay=0.3, on_request=None):
        self.upstream = upstream.rstrip("/")
        self.rate, self.faults, self.delay = rate, tuple(faults), delay
        self.rng = np.random.default_rng(seed)
        self.on_request = on_request
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(FAULTS + ("forwarded",), 0)
        self.n = 0
        self.client = httpx.Client(timeout=600)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.n += 1
                    n = proxy.n
                    fault = proxy.faults[proxy.rng.integers(len(proxy.faults))] if proxy.rng.random() < proxy.rate \
                        else None
                    if fault:
                        proxy.counts[fault] += 1
                if proxy.on_request is not None:
                    proxy.on_request(n)
                if fault in ("503", "429"):
                    return self._reply(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if fault == "reset":
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return None
                if fault == "delay":
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                try:
                    response = proxy.client.request(self.command, proxy.upstream + self.path, content=body,
                                                    headers=headers)
                except httpx.HTTPError:
                    return self._reply(502, b'{"error": {"message": "upstream unreachable"}}')
                with proxy.lock:
                    proxy.counts["forwarded"] += 1
                return self._reply(response.status_code, response.content)

            def _reply(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
