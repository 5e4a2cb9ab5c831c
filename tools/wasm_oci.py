#!/usr/bin/env python3
"""Writes a Wasm module as an OCI image layout directory (`oci:DIR:TAG` for skopeo), in the
*compat* variant of the Wasm image specification that Istio's `oci://` fetcher pulls
(https://github.com/solo-io/wasm/blob/master/spec/spec-compat.md; istio pkg/wasm/imagefetcher.go):

- one layer, media type `application/vnd.oci.image.layer.v1.tar+gzip`, a tar holding the
  module as `plugin.wasm`;
- an OCI image config (`application/vnd.oci.image.config.v1+json`) naming the layer's diff_id;
- the manifest (`application/vnd.oci.image.manifest.v1+json`) annotated
  `module.wasm.image/variant: compat`.

Reproducible: the same module gives the same bytes, hence the same digests (tar and gzip carry
no timestamps or owners). Standard library only.

    tools/wasm_oci.py --wasm dist/origin_pull.wasm --tag 0.1.0 --out dist/oci
    skopeo copy oci:dist/oci:0.1.0 docker://registry.example.com/cdn/origin-pull:0.1.0
"""

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
VARIANT_ANNOTATION = "module.wasm.image/variant"
WASM_NAME = "plugin.wasm"


def _tar(wasm: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_NAME)
        info.size, info.mode, info.mtime = len(wasm), 0o644, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def _json(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def build(wasm: bytes, tag: str, out: Path, source: str = "", version: str = "") -> str:
    """Writes the layout into `out` (replaced); returns the manifest digest (`sha256:…`)."""
    if wasm[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module (no \\0asm magic)")
    blobs = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    tar = _tar(wasm)
    layer = _gzip(tar)
    config = _json({
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "config": {},
    })
    annotations = {VARIANT_ANNOTATION: "compat",
                   "org.opencontainers.image.title": "origin-pull"}
    if version:
        annotations["org.opencontainers.image.version"] = version
    if source:
        annotations["org.opencontainers.image.source"] = source
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": blob(layer), "size": len(layer)}],
        "annotations": annotations,
    })
    manifest_digest = blob(manifest)
    index = _json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest,
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    })
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    (out / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(index)
    for digest, data in blobs.items():
        (out / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return manifest_digest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True, type=Path)
    ap.add_argument("--tag", required=True, help="the reference name inside the layout")
    ap.add_argument("--out", required=True, type=Path, help="layout directory (replaced)")
    ap.add_argument("--version", default="", help="org.opencontainers.image.version")
    ap.add_argument("--source", default="", help="org.opencontainers.image.source")
    args = ap.parse_args(argv)
    try:
        digest = build(args.wasm.read_bytes(), args.tag, args.out, args.source, args.version)
    except (OSError, ValueError) as e:
        print(f"wasm_oci: {e}", file=sys.stderr)
        return 1
    print(f"oci:{args.out}:{args.tag} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
