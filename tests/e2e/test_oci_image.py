"""`make release` writes dist/oci: the filter as a Wasm OCI image (compat variant: one
tar+gzip layer holding plugin.wasm, annotated `module.wasm.image/variant: compat`, what Istio's
`oci://` fetcher pulls). It is pushed with skopeo to a local registry (Debian `docker-registry`
on loopback), pulled back, and must be byte-identical."""

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import urllib.request

import pytest

import toolbox
from harness import _spawn, _stop_proc, free_port, port_open, wait_for

REGISTRY_IP = "127.0.0.91"
sys.path.insert(0, str(toolbox.REPO / "tools"))
import wasm_oci  # noqa: E402


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing (Debian package `{name}`; .ci/run installs it)")
    return path


def read_layout(layout, tag):
    """(manifest digest, manifest bytes, {digest: blob}) of `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    blob = lambda d: (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes()  # noqa: E731
    manifest = blob(entry["digest"])
    doc = json.loads(manifest)
    blobs = {d["digest"]: blob(d["digest"]) for d in [doc["config"], *doc["layers"]]}
    return entry["digest"], manifest, blobs


def wasm_of(layer):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm"], names
        return tar.extractfile("plugin.wasm").read()


def test_release_image_is_the_compat_variant_istio_pulls():
    dist = toolbox.release()
    wasm = (dist / "origin_pull.wasm").read_bytes()
    tag = (dist / "VERSION").read_text().split()[1]
    assert json.loads((dist / "oci" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    digest, manifest, blobs = read_layout(dist / "oci", tag)
    assert digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    doc = json.loads(manifest)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["annotations"]["module.wasm.image/variant"] == "compat"
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = doc["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    for d in [doc["config"], layer]:
        assert d["digest"] == "sha256:" + hashlib.sha256(blobs[d["digest"]]).hexdigest()
        assert d["size"] == len(blobs[d["digest"]])
    assert wasm_of(blobs[layer["digest"]]) == wasm
    config = json.loads(blobs[doc["config"]["digest"]])
    tar = gzip.decompress(blobs[layer["digest"]])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar).hexdigest()]
    # Reproducible: the same module gives the same image.
    assert wasm_oci.build(wasm, tag, dist.parent / "target" / "oci-again",
                          version=" ".join((dist / "VERSION").read_text().split()[1:])) == digest
    # A file that is not a module is refused.
    with pytest.raises(ValueError, match="not a WebAssembly module"):
        wasm_oci.build(b"MZ\x90\x00", tag, dist.parent / "target" / "oci-bad")


def test_image_round_trips_through_a_registry_byte_identical(tmp_path):
    dist = toolbox.release()
    tag = (dist / "VERSION").read_text().split()[1]
    skopeo = tool("skopeo")
    port = free_port(REGISTRY_IP)
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'storage'}}}}}\n"
        f"http: {{addr: '{REGISTRY_IP}:{port}'}}\n")
    log = open(tmp_path / "registry.log", "wb")
    registry = _spawn([tool("docker-registry"), "serve", str(config)], stdout=log,
                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_for(lambda: port_open(REGISTRY_IP, port), 20, what="docker-registry")
        ref = f"{REGISTRY_IP}:{port}/cdn/origin-pull:{tag}"

        def run(*args):
            p = subprocess.run([skopeo, *args], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            return p.stdout

        run("copy", "--preserve-digests", "--dest-tls-verify=false",
            f"oci:{dist / 'oci'}:{tag}", f"docker://{ref}")
        # What a puller (Istio's agent) gets from the registry: the very manifest.
        req = urllib.request.Request(
            f"http://{REGISTRY_IP}:{port}/v2/cdn/origin-pull/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            served = r.read()
            served_digest = r.headers["Docker-Content-Digest"]
        digest, manifest, blobs = read_layout(dist / "oci", tag)
        assert (served, served_digest) == (manifest, digest)

        pulled = tmp_path / "pulled"
        run("copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{ref}",
            f"oci:{pulled}:{tag}")
        p_digest, p_manifest, p_blobs = read_layout(pulled, tag)
        assert (p_digest, p_manifest, p_blobs) == (digest, manifest, blobs)
        layer = json.loads(p_manifest)["layers"][0]["digest"]
        assert wasm_of(p_blobs[layer]) == (dist / "origin_pull.wasm").read_bytes()
    finally:
        _stop_proc(registry)
