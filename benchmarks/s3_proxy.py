"""An HTTP proxy in front of an S3 server that adds latency and failures, and counts requests.

A local moto server answers in about a millisecond; a real object store takes
10-50 ms per request.  Put this proxy between the code and moto to measure (or
test) what that latency costs, how many GETs an epoch makes, and what a
throttling store (503 SlowDown) does::

    proxy = S3Proxy('http://127.0.0.1:5000', latency=0.020).start()
    os.environ['S3_ENDPOINT_URL'] = proxy.url
    ...
    proxy.counts['GET']          # requests by method
    proxy.fail_next(3)           # the next 3 requests get 503 SlowDown
    proxy.fail_all(after=2)      # an outage: every request after the next 2 gets 503
    proxy.stop()

One thread per client connection (keep-alive, as boto3 uses them), one
upstream connection per client connection; requests and responses are
forwarded as they are, the latency is slept before each request is forwarded.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import threading
import time
import urllib.parse

_HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'proxy-connection'}
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b'<Message>Please reduce your request rate.</Message></Error>'
)


class S3Proxy:
    """Forward HTTP to ``upstream`` with ``latency`` seconds added per request."""

    def __init__(self, upstream: str, latency: float = 0.0, port: int = 0) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.latency = latency
        self.counts: collections.Counter[str] = collections.Counter()
        self.paths: collections.Counter[str] = collections.Counter()
        self._failures = 0
        self._fail_paths: collections.Counter[str] = collections.Counter()
        self._outage: list | None = None  # [path text, requests still served]
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self._server.server_address[1]}'

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, times: int, path_contains: str = '') -> None:
        """Answer the next ``times`` requests (whose path contains the text) with 503."""
        with self._lock:
            if path_contains:
                self._fail_paths[path_contains] += times
            else:
                self._failures += times

    def fail_all(self, after: int = 0, path_contains: str = '') -> None:
        """An outage that lasts: answer every request (whose path contains the text) with 503,
        once ``after`` more of them were served."""
        with self._lock:
            self._outage = [path_contains, after]

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()

    def _take(self, method: str, path: str) -> bool:
        """Count the request; True when it must fail."""
        with self._lock:
            self.counts[method] += 1
            self.paths[f'{method} {urllib.parse.urlsplit(path).path}'] += 1
            for text, left in self._fail_paths.items():
                if left and text in path:
                    self._fail_paths[text] -= 1
                    return True
            if self._failures:
                self._failures -= 1
                return True
            if self._outage is not None and self._outage[0] in path:
                if self._outage[1] <= 0:
                    return True
                self._outage[1] -= 1
            return False

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            upstream_conn: http.client.HTTPConnection | None = None

            def log_message(self, *args) -> None:  # quiet: the benchmark prints its own
                pass

            def _body(self) -> bytes:
                if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b';')[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            while self.rfile.readline() not in (b'\r\n', b''):
                                pass  # trailers
                            return b''.join(chunks)
                        chunks.append(chunk)
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def _forward(self) -> None:
                body = self._body()
                if proxy.latency:
                    time.sleep(proxy.latency)
                if proxy._take(self.command, self.path):
                    self._answer(503, {'Content-Type': 'application/xml'}, _SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers['Content-Length'] = str(len(body))
                for attempt in range(2):  # a kept-alive upstream connection may have closed
                    try:
                        conn = self._upstream()
                        conn.request(self.command, self.path, body=body, headers=headers)
                        response = conn.getresponse()
                        data = response.read()
                        break
                    except (http.client.HTTPException, OSError):
                        self.upstream_conn = None
                        if attempt:
                            raise
                out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
                if self.command != 'HEAD':  # a HEAD's length is the object's
                    out['Content-Length'] = str(len(data))
                self._answer(response.status, out, data)

            def _upstream(self) -> http.client.HTTPConnection:
                if self.upstream_conn is None:
                    self.upstream_conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                return self.upstream_conn

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response_only(status)
                headers.setdefault('Content-Length', str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
