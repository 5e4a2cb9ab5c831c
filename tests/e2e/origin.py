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
One line per request is appended to --log and flushed: "<name> <method> <path> <host>".
The line "ready <name> <listen>" is printed on stdout once the socket listens.
"""

import argparse
import http.server
import socket
import ssl
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
    return p.parse_args(argv)


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
        srv.write_log(f"{srv.name} {self.command} {self.path} {host}")

        status = srv.routes.get(path_only, srv.status)
        body = f"served-by={srv.name} path={self.path}\n".encode()
        parts = path_only.split("/")
        if len(parts) > 2 and parts[1] == "__sleep":
            time.sleep(min(int(parts[2]), 120_000) / 1000.0)
        if len(parts) > 2 and parts[1] == "__size":
            body = b"x" * int(parts[2])

        self.send_response(status)
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
        except (ConnectionError, ssl.SSLError, socket.timeout):
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
        self.routes = {}
        for item in args.route:
            path, _, code = item.rpartition("=")
            if not path or not code.isdigit():
                raise SystemExit(f"origin.py: --route wants PATH=STATUS, got {item!r}")
            self.routes[path] = int(code)
        self._log = open(args.log, "a", encoding="utf-8") if args.log else None
        self._log_lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)
        if args.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            # Handshake lazily in the handler thread, not in accept() on the serving thread.
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def write_log(self, line):
        if self._log:
            with self._log_lock:
                self._log.write(line + "\n")
                self._log.flush()


def main(argv=None):
    args = parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit(f"origin.py: refusing to bind {host}: loopback addresses only")
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
