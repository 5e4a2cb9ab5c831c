"""The release module fetched the way production fetches it: Envoy downloads it over HTTP from
a file server on loopback (`render --wasm-url … --sha256 …`, a `remote` code source) and loads
it; a module whose sha256 differs is refused."""

import hashlib
import shutil
import subprocess
import sys
import urllib.request

import yaml

import envoy_config as ec
import toolbox
from harness import _spawn, _stop_proc, free_port, port_open, wait_for

DIST = toolbox.DIST
FILE_SERVER_IP = "127.0.0.81"


class FileServer:
    """`python -m http.server` on FILE_SERVER_IP serving `directory`; its log lists the GETs."""

    def __init__(self, directory, log):
        self.dir, self.log = directory, log
        self.port = free_port(FILE_SERVER_IP)

    def __enter__(self):
        out = open(self.log, "ab")
        self.proc = _spawn([sys.executable, "-m", "http.server", str(self.port),
                            "--bind", FILE_SERVER_IP, "--directory", str(self.dir)],
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        wait_for(lambda: port_open(FILE_SERVER_IP, self.port), 10, what="file server")
        return self

    def __exit__(self, *exc):
        _stop_proc(self.proc)

    def url(self, name):
        return f"http://{FILE_SERVER_IP}:{self.port}/{name}"

    def gets(self, name):
        return self.log.read_text().count(f'"GET /{name} HTTP/1.1" 200')


def start_envoy(tmp_path, name, plugin_config, url, sha256, *extra):
    listen, admin = free_port(), free_port()
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(ec.config_text(plugin_config))
    boot = tmp_path / f"{name}.yaml"
    p = toolbox.run_cli("render", str(cfg), "-o", str(boot), "--listen", f"127.0.0.1:{listen}",
                        "--admin", f"127.0.0.1:{admin}", "--wasm-url", url, "--sha256", sha256,
                        *extra)
    assert p.returncode == 0, p.stderr
    doc = yaml.safe_load(boot.read_text())
    [listener] = doc["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    code = hcm["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]
    assert code["remote"]["http_uri"] == {"uri": url, "cluster": "origin_pull_wasm_fetch",
                                          "timeout": "30s"}
    assert code["remote"]["sha256"] == sha256 and "local" not in code
    assert "origin_pull_wasm_fetch" in [c["name"] for c in doc["static_resources"]["clusters"]]
    log = tmp_path / f"{name}.log"
    proc = _spawn([ec_envoy(), "-c", str(boot), "--disable-hot-restart", "--concurrency", "1",
                   "-l", "info", "--component-log-level", "wasm:info,config:debug",
                   "--log-path", str(log)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                  cwd=tmp_path)
    return proc, listen, admin, log


def ec_envoy():
    from harness import envoy_binary
    return envoy_binary()


def request(port, host="www.test.com"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/fetched", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_envoy_loads_the_release_module_from_a_url_and_refuses_a_wrong_sha256(env, tmp_path):
    wasm = toolbox.release() / "origin_pull.wasm"
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(wasm, www / "origin_pull.wasm")
    sha = hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert (DIST / "origin_pull.wasm.sha256").read_text().split()[0] == sha
    m1 = env.start_origin("m1", ip="127.0.0.82")
    config = {"debug_headers": True,
              "domains": [{"domain": "www.test.com", "master": {"ips": [m1.addr]}}]}

    with FileServer(www, tmp_path / "files.log") as files:
        proc, listen, admin, log = start_envoy(tmp_path, "good", config,
                                               files.url("origin_pull.wasm"), sha)
        try:
            wait_for(lambda: port_open("127.0.0.1", admin) and urllib.request.urlopen(
                f"http://127.0.0.1:{admin}/ready", timeout=2).status == 200, 30,
                what="Envoy ready with the downloaded module")
            status, headers = request(listen)
            assert (status, headers.get("x-served-by")) == (200, "m1")
            assert headers.get("x-origin-pull-origin") == f"master={m1.addr}"
            assert files.gets("origin_pull.wasm") >= 1
            wait_for(lambda: "configured 1 domain(s)" in log.read_text(), 10,
                     what="the filter's start-up line")
        finally:
            _stop_proc(proc)

        fetched = files.gets("origin_pull.wasm")
        wrong = hashlib.sha256(wasm.read_bytes() + b"tampered").hexdigest()
        proc, listen, admin, log = start_envoy(tmp_path, "wrong", config,
                                               files.url("origin_pull.wasm"), wrong,
                                               "--wasm-fetch-retries", "1")
        try:
            # The filter and the router's upstream logger (the same module) each fetch it; the
            # second to start logs a spurious "failed to load (in progress)" first, so wait for
            # the end of the retries.
            wait_for(lambda: "Retry limit exceeded for fetching data from remote data source"
                     in log.read_text(), 30, what="Envoy's refusal of the module")
            text = log.read_text()
            line = next(l for l in text.splitlines() if "Plugin origin_pull failed to load" in l)
            assert "[critical][wasm]" in line
            # The sha256 check is what refused it (Envoy's words, `config` component, debug).
            url = files.url("origin_pull.wasm")
            assert f"fetch remote data [uri = {url}]: data is invalid" in text
            # First try + 1 retry (each fetcher tries once; the retry limit was reached).
            assert files.gets("origin_pull.wasm") - fetched >= 2, files.gets("origin_pull.wasm")
            assert "configured 1 domain(s)" not in text  # the filter never ran
            # Fail closed: no request is routed without the filter.
            wait_for(lambda: port_open("127.0.0.1", listen), 10, what="listener")
            status, headers = request(listen)
            assert status == 503 and "x-served-by" not in headers
            assert m1.count() == 1
        finally:
            _stop_proc(proc)


def test_file_watched_set_fetches_the_module_through_its_cds_cluster(env, tmp_path):
    # --out-dir: the download cluster is in cds.yaml, which Envoy loads before the listener.
    wasm = toolbox.release() / "origin_pull.wasm"
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(wasm, www / "origin_pull.wasm")
    sha = hashlib.sha256(wasm.read_bytes()).hexdigest()
    m1 = env.start_origin("m1", ip="127.0.0.83")
    cfg = tmp_path / "plugin.json"
    cfg.write_text(ec.config_text({"debug_headers": True, "domains": [
        {"domain": "www.test.com", "master": {"ips": [m1.addr]}}]}))
    listen, admin = free_port(), free_port()
    out = tmp_path / "envoy"
    with FileServer(www, tmp_path / "files.log") as files:
        p = toolbox.run_cli("render", str(cfg), "--out-dir", str(out), "--listen",
                            f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                            "--wasm-url", files.url("origin_pull.wasm"), "--sha256", sha)
        assert p.returncode == 0, p.stderr
        cds = yaml.safe_load((out / "cds.yaml").read_text())["resources"]
        assert "origin_pull_wasm_fetch" in [c["name"] for c in cds]
        log = tmp_path / "dyn.log"
        proc = _spawn([ec_envoy(), "-c", str(out / "envoy.yaml"), "--disable-hot-restart",
                       "--concurrency", "1", "--log-path", str(log)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      stdin=subprocess.DEVNULL, cwd=tmp_path)
        try:
            wait_for(lambda: port_open("127.0.0.1", listen) and request(listen)[0] == 200, 30,
                     what="the listener serving with the downloaded module")
            status, headers = request(listen)
            assert (status, headers.get("x-served-by")) == (200, "m1")
            assert files.gets("origin_pull.wasm") >= 1
        finally:
            _stop_proc(proc)
