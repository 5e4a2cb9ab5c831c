"""`origin-pull render` on its own: the static bootstrap runs a real Envoy, a reload that needs a
new DNS cluster brings it through CDS, the access log prints origin-pull's fields, and render
refuses what it must. (Every other e2e test runs on rendered configurations too, via harness.Env.)
Origins on 127.0.7.x; domain origins need a resolvable name, so they use localhost (127.0.0.1)."""

import json
import subprocess
import sys

import envoy_config as ec
from harness import _spawn, _stop_proc, free_port, port_open, wait_for

D = "www.test.com"


def render(*args, input_text=None):
    return subprocess.run([str(ec.CLI), "render", *args], capture_output=True, text=True,
                          timeout=60, input=input_text)


def test_static_bootstrap_serves_and_fails_over(env, tmp_path, envoy_bin):
    master = env.start_origin("master", ip="127.0.7.2", routes={"/miss": 404})
    slave = env.start_origin("slave", ip="127.0.7.3")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"domains": [{"domain": D, "master": {"ips": [master.addr]},
                                            "slave": {"ips": [slave.addr]}}],
                               "debug_headers": True}))
    port, admin = free_port("127.0.7.1"), free_port()
    boot = tmp_path / "static.yaml"
    p = render(str(cfg), "-o", str(boot), "--listen", f"127.0.7.1:{port}",
               "--admin", f"127.0.0.1:{admin}", "--wasm", str(ec.WASM))
    assert p.returncode == 0, p.stderr
    assert "dynamic_resources" not in boot.read_text()
    log = open(tmp_path / "access.log", "wb")
    proc = _spawn([envoy_bin, "-c", str(boot), "--concurrency", "1", "--disable-hot-restart",
                   "--log-path", str(tmp_path / "envoy.log"), "--file-flush-interval-msec", "100"],
                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_for(lambda: proc.poll() is None and port_open("127.0.7.1", port), 30,
                 what="static Envoy listener")
        import http.client
        c = http.client.HTTPConnection("127.0.7.1", port, timeout=10)
        c.request("GET", "/miss", headers={"Host": D})
        r = c.getresponse()
        assert (r.status, r.getheader("x-served-by")) == (200, "slave")
        r.read()
        # The rendered access log names the origin that served, its role and the attempts.
        line = wait_for(lambda: next((l for l in (tmp_path / "access.log").read_text().splitlines()
                                      if "/miss" in l), None), 10, what="access log line")
        assert f"origin={slave.addr} role=slave attempts=2" in line, line
    finally:
        _stop_proc(proc, 10)


def test_reload_to_a_domain_origin_brings_its_cluster_through_cds(env):
    ip_origin = env.start_origin("ip", ip="127.0.7.4")
    port = free_port("127.0.0.1")
    _dom = env.start_origin("dom", ip="127.0.0.1", port=port)
    env.start({"domains": [{"domain": D, "master": {"ips": [ip_origin.addr]}}]})
    assert env.request(D, "/a").headers["x-served-by"] == "ip"
    cluster = f"origin_pull|http|localhost|{port}"
    assert env.stat(f"cluster.{cluster}.upstream_rq_total", None) is None  # not rendered yet

    env.reload({"domains": [{"domain": D, "master": {"domain": f"localhost:{port}"}}]},
               expect="success")
    r = env.request(D, "/b")
    assert (r.status, r.headers["x-served-by"]) == (200, "dom"), r
    assert env.stat(f"cluster.{cluster}.upstream_rq_total") == 1
    assert env.stat("cluster_manager.cds.update_success") >= 2


def test_render_refuses_an_invalid_configuration_with_the_filters_message(tmp_path):
    bad = '{"domains": [{"domain": "www.test.com", "master": {"ips": ["127.0.7.9:0"]}}]}'
    p = render("-", input_text=bad)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("invalid origin-pull configuration: domain \"www.test.com\": "
                               "field master.ips[0]"), p.stderr


def test_render_options_are_checked(tmp_path):
    cfg = str(ec.REPO / "envoy" / "examples" / "demo.json")
    for args, message in [
        (["--admin", "0.0.0.0:9901"], "keep it on loopback"),
        (["--connect-timeout", "100ms"], "must be seconds like 1s"),
        (["--listen", "localhost:80"], "is not IP:PORT"),
        (["--istio"], "--wasm-url is required"),
        (["--out-dir", str(tmp_path), "--istio"], "does not go with"),
        (["--bogus"], "unknown option --bogus"),
        (["--wasm-url", "http://127.0.0.7/origin_pull.wasm"], "needs --sha256"),
        (["--wasm-url", "oci://r.example/op:1", "--sha256", "a" * 64], "oci:// is for --istio"),
        (["--wasm", "x.wasm", "--wasm-url", "http://127.0.0.7/m.wasm", "--sha256", "a" * 64],
         "not both"),
        (["--sha256", "a" * 64], "--sha256 goes with --wasm-url"),
        (["--wasm-fetch-retries", "2"], "goes with --wasm-url"),
        (["--wasm-url", "http://127.0.0.7/m.wasm", "--sha256", "a" * 64,
          "--wasm-fetch-retries", "x"], "expected 0..=100"),
    ]:
        p = render(cfg, *args)
        assert p.returncode == 2, (args, p.stdout[-300:])
        assert message in p.stderr, (args, p.stderr[:300])


def test_bucket_credentials_are_named_for_the_vm_never_read():
    """render runs where the secrets are not: it names the `*_env` variables as host_env_keys
    (Envoy copies them from its own environment) and never needs or prints their values."""
    cfg = str(ec.REPO / "envoy" / "examples" / "private-bucket.json")
    p = subprocess.run([str(ec.CLI), "render", cfg], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})  # none of the variables set
    assert p.returncode == 0, p.stderr
    import yaml
    lst = yaml.safe_load(p.stdout)["static_resources"]["listeners"][0]
    vm = ec._wasm_config(lst)["vm_config"]
    assert vm["environment_variables"] == {"host_env_keys": sorted(ec.EXAMPLE_ENV)}
    assert "set them where Envoy runs" in p.stderr
    for value in ec.EXAMPLE_ENV.values():
        assert value not in p.stdout + p.stderr


def test_render_help():
    p = render("--help")
    assert p.returncode == 0 and "--out-dir DIR" in p.stdout and "--istio" in p.stdout


def test_named_clusters_are_left_to_the_user_and_said_so(tmp_path):
    cfg = str(ec.REPO / "envoy" / "examples" / "cluster-origin.json")
    p = render(cfg)
    assert p.returncode == 0, p.stderr
    assert "define these clusters yourself" in p.stderr
    assert "outbound|80||origin-a.media.svc.cluster.local" in p.stderr
    assert "#   outbound|80||origin-backup.media.svc.cluster.local" in p.stdout
    import yaml
    names = [c["name"] for c in yaml.safe_load(p.stdout)["static_resources"]["clusters"]]
    # Render defines its own clusters and the composite clusters of router failovers over the
    # named ones, never the named clusters themselves.
    assert names[:2] == [ec.IP_CLUSTER_HTTP, ec.IP_CLUSTER_HTTPS]
    assert not any(n.startswith("outbound|") for n in names), names
    assert all(n.startswith("origin_pull_chain(") for n in names[2:]), names


if __name__ == "__main__":
    sys.exit("run with pytest")
