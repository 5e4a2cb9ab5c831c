#!/usr/bin/env python3
"""A tiny origin server for the origin-pull demo and end-to-end tests (stdlib only).

    python3 tests/e2e/origin.py --listen 127.0.0.2:8081 --name m1 \
        [--status 404] [--route /1.jpg=404 ...] [--tls-cert c --tls-key k] [--log path]

Every method gets an answer (HTTP/1.1, keep-alive, content-length):
  status   --route PATH=STATUS for that exact path (query ignored), else --status (default 200)
  headers  x-served-by: <name>; x-seen-host: <Host received>; x-seen-dst: <x-envoy-original-dst-host
           received, or "-">; x-seen-body-bytes: <request body length>
  body     "served-by=<name> path=<path>\n" (none for HEAD)
Special paths (for tests):
  /__sleep/<ms>/...    wait <ms> milliseconds before answering (response timeouts)
  /__size/<bytes>/...  answer with a body of exactly <bytes> bytes of "x" (large failovers)
  /__reset/...         read the request, answer nothing and reset the connection (TCP RST)
  /__stall/<bytes>/... when the status is not 200: the status and headers with content-length
                       <bytes>, then no body: the connection is held until the client closes it
                       (at most 60 s) (a failed answer whose body stalls)
  /__big/<bytes>[/rate/<bytes per s>]/...  a large object streamed in 64 KiB chunks, never held
                       in memory: byte i is i % 256 (big_sha256() gives its digest); content-type
                       video/mp4, an ETag, Range (one range, 206) and If-None-Match (304); with
                       rate, the body is paced (a slow but live origin)
With --hostile only:
  /__hop/...           also send hop-by-hop headers (Connection: x-hop, Keep-Alive, Upgrade, ...)
                       and x-seen-headers: the names of the request headers received (lower-case)
  /__malformed/<kind>  a broken response (kinds: nocolon, spacecolon, twocl, status, nul), or a
                       502 carrying the drain filter's own x-origin-pull-broken-status (kinds:
                       brokenmark, brokenobs: the value as bytes that are not UTF-8), then close
One line per request is appended to --log and flushed: "<name> <method> <path> <host>", and to
--timed-log (chaos tests): "<unix time, s> <method> <path>".
--blackhole: accept TCP connections and never answer (each request head read off them is a
"<unix time> <method> <path>" line in --timed-log, a connection without one "<unix time> CONNECT -");
the socket is held until the client gives up.
The line "ready <name> <listen>" is printed on stdout once the socket listens.
"""

import argparse
import http.server
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="IP:PORT to bind (loopback only)")
    p.add_argument("--name", required=True, help="name reported in x-served-by and the body")
    p.add_argument("--status", type=int, default=200, help="status for every path without a --route")
    p.add_argument("--route", action="append", default=[], metavar="PATH=STATUS",
                   help="status for one exact path; repeatable")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--log", help="append one line per request to this file")
    p.add_argument("--timed-log", help="append '<unix time> <method> <path>' per request")
    p.add_argument("--delay-ms", type=int, default=0,
                   help="wait this long before every answer (a slow origin)")
    p.add_argument("--control", help="JSON file {\"status\": N, \"delay_ms\": N} re-read when it "
                   "changes: turns a healthy origin into a failing/slow one without a restart")
    p.add_argument("--hostile", action="store_true",
                   help="serve the /__hop/ and /__malformed/ paths")
    p.add_argument("--blackhole", action="store_true",
                   help="accept connections but never read or answer them")
    return p.parse_args(argv)


HOP_BY_HOP = [("connection", "x-hop"), ("x-hop", "secret-hop"), ("keep-alive", "timeout=5"),
              ("proxy-connection", "keep-alive"), ("upgrade", "h2c"), ("te", "trailers"),
              ("trailer", "x-t"), ("proxy-authenticate", "Basic"), ("x-end-to-end", "kept")]
MALFORMED = {
    "nocolon": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header Line\r\n\r\nok",
    "spacecolon": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A : b\r\n\r\nok",
    "twocl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok",
    "status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "nul": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok",
    "brokenmark": b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 2\r\n"
                  b"x-origin-pull-broken-status: 2000\r\n\r\nok",
    "brokenobs": b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 2\r\n"
                 b"x-origin-pull-broken-status: caf\xe9 \xff\r\n\r\nok",
}


BIG_CHUNK = 64 * 1024
_BIG_PATTERN = bytes(range(256)) * (BIG_CHUNK // 256 + 1)


def big_chunk(offset, n):
    """Bytes [offset, offset + n) of a /__big/ object (n <= BIG_CHUNK): byte i is i % 256."""
    o = offset % 256
    return _BIG_PATTERN[o:o + n]


def big_sha256(size, start=0, end=None):
    """sha256 hex digest of bytes [start, end) of a /__big/ object, computed in chunks."""
    import hashlib
    end = size if end is None else end
    h = hashlib.sha256()
    offset = start
    while offset < end:
        n = min(BIG_CHUNK, end - offset)
        h.update(big_chunk(offset, n))
        offset += n
    return h.hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "origin-pull-test-origin"

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        # One response = several small writes: without NODELAY, Nagle + delayed ACK add ~40 ms.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):  # keep stderr quiet; the --log file is the record
        pass

    def _answer(self):
        srv = self.server
        path_only = self.path.split("?", 1)[0]
        length = int(self.headers.get("content-length") or 0)
        received = self.rfile.read(length) if length > 0 else b""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            received = self._read_chunked()
        host = self.headers.get("host", "-")
        srv.write_log(f"{srv.name} {self.command} {self.path} {host}", self.command, self.path)

        control = srv.control()
        status = srv.routes.get(path_only, control.get("status", srv.status))
        body = f"served-by={srv.name} path={self.path}\n".encode()
        parts = path_only.split("/")
        delay_ms = min(int(control.get("delay_ms", srv.delay_ms)), 120_000)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        if len(parts) > 2 and parts[1] == "__sleep":
            time.sleep(min(int(parts[2]), 120_000) / 1000.0)
        if len(parts) > 2 and parts[1] == "__size":
            body = b"x" * int(parts[2])
        if len(parts) > 2 and parts[1] == "__big" and status == 200:
            self._big(int(parts[2]), int(parts[4]) if len(parts) > 4 and parts[3] == "rate" else 0, host)
            return
        if len(parts) > 1 and parts[1] == "__reset":
            # SO_LINGER 0: closing sends RST instead of FIN (a crashing handler, a hostile URL).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return

        if len(parts) > 2 and parts[1] == "__stall" and status != 200:
            self.send_response(status)
            self.send_header("content-length", parts[2])
            self.send_header("x-served-by", srv.name)
            self.end_headers()
            self.wfile.flush()
            self.connection.settimeout(60)
            try:
                while self.connection.recv(4096):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return

        hostile = srv.hostile and len(parts) > 2
        if hostile and parts[1] == "__malformed":
            self.wfile.write(MALFORMED.get(parts[2], MALFORMED["nocolon"]))
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(status)
        if hostile and parts[1] == "__hop":
            for name, value in HOP_BY_HOP:
                self.send_header(name, value)
            self.send_header("x-seen-headers", ",".join(k.lower() for k in self.headers.keys()))
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", srv.name)
        self.send_header("x-seen-host", host)
        self.send_header("x-seen-dst", self.headers.get("x-envoy-original-dst-host", "-"))
        self.send_header("x-seen-body-bytes", str(len(received)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _big(self, size, rate, host):
        """Streams a deterministic object of `size` bytes (see big_chunk) without holding it."""
        etag = f'"big-{size}"'
        start, end, status = 0, size, 200
        if self.headers.get("if-none-match") == etag:
            self.send_response(304)
            self.send_header("etag", etag)
            self.send_header("x-served-by", self.server.name)
            self.end_headers()
            self.wfile.flush()
            return
        want = self.headers.get("range", "")
        if want.startswith("bytes=") and "," not in want:
            first, _, last = want[6:].partition("-")
            if first.isdigit():
                start = int(first)
                end = min(size, int(last) + 1) if last.isdigit() else size
                status = 206
        self.send_response(status)
        self.send_header("content-type", "video/mp4")
        self.send_header("content-length", str(end - start))
        self.send_header("etag", etag)
        self.send_header("accept-ranges", "bytes")
        if status == 206:
            self.send_header("content-range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("x-served-by", self.server.name)
        self.send_header("x-seen-host", host)
        self.end_headers()
        if self.command == "HEAD":
            self.wfile.flush()
            return
        began = time.monotonic()
        offset = start
        while offset < end:
            n = min(BIG_CHUNK, end - offset)
            self.wfile.write(big_chunk(offset, n))
            offset += n
            if rate:
                ahead = (offset - start) / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(min(ahead, 5.0))
        self.wfile.flush()

    def _read_chunked(self):
        data = b""
        for _ in range(1_000_000):  # bounded
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            data += self.rfile.read(size)
            self.rfile.readline()
        return data

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            self.close_connection = True

    def __getattr__(self, name):
        # do_GET, do_POST, do_ANYTHING: every method is answered the same way.
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)


class OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, args):
        self.name = args.name
        self.status = args.status
        self.delay_ms = min(args.delay_ms, 120_000)
        self.hostile = args.hostile
        self._control_path = args.control
        self._control = (None, {})  # (mtime, settings)
        self.routes = {}
        for item in args.route:
            path, _, code = item.rpartition("=")
            if not path or not code.isdigit():
                raise SystemExit(f"origin.py: --route wants PATH=STATUS, got {item!r}")
            self.routes[path] = int(code)
        self._log = open(args.log, "a", encoding="utf-8") if args.log else None
        self._timed = open(args.timed_log, "a", encoding="utf-8") if args.timed_log else None
        self._log_lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)
        if args.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            # Handshake lazily in the handler thread, not in accept() on the serving thread.
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def control(self):
        """Settings from --control, re-read only when the file's mtime changes."""
        if not self._control_path:
            return {}
        try:
            mtime = os.stat(self._control_path).st_mtime_ns
        except OSError:
            return {}
        if mtime != self._control[0]:
            try:
                with open(self._control_path, encoding="utf-8") as f:
                    self._control = (mtime, json.load(f))
            except (OSError, ValueError):
                return self._control[1]
        return self._control[1]

    def write_log(self, line, method="-", path="-"):
        with self._log_lock:
            if self._log:
                self._log.write(line + "\n")
                self._log.flush()
            if self._timed:
                self._timed.write(f"{time.time():.3f} {method} {path}\n")
                self._timed.flush()


def blackhole(host, port, args):
    """Accept every connection, keep it open, never answer (a hung origin). The request head is
    read (never answered) so that the timed log names each request: "<time> <method> <path>",
    like a live origin's; a connection that sends no request head within 5 s is logged as
    "<time> CONNECT -"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    timed = open(args.timed_log, "a", encoding="utf-8") if args.timed_log else None
    lock = threading.Lock()
    held = []

    def log(method, path):
        if timed:
            with lock:
                timed.write(f"{time.time():.3f} {method} {path}\n")
                timed.flush()

    def read_head(conn):
        conn.settimeout(5.0)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        parts = data.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) >= 2:
            log(parts[0].decode("latin-1"), parts[1].decode("latin-1"))
        else:
            log("CONNECT", "-")

    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(512)
        print(f"ready {args.name} {args.listen} (black hole)", flush=True)
        while True:
            conn, _ = s.accept()
            held.append(conn)
            held = [c for c in held if c.fileno() != -1][-512:]  # bounded (dropped sockets are closed)
            threading.Thread(target=read_head, args=(conn,), daemon=True).start()


def main(argv=None):
    args = parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit(f"origin.py: refusing to bind {host}: loopback addresses only")
    if args.blackhole:
        try:
            blackhole(host, int(port), args)
        except KeyboardInterrupt:
            pass
        return 0
    server = OriginServer((host, int(port)), args)
    print(f"ready {args.name} {args.listen}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
