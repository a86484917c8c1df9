#!/usr/bin/env python3
"""Writes Gantry's container image as an OCI image archive, without a container daemon and
reproducibly: the same inputs give the same bytes (files sorted, owners 0 or the image's user,
every timestamp SOURCE_DATE_EPOCH, gzip without a name or time).

    python3 docker/oci.py BINARY CONFIG OUT.tar [TAG]

BINARY is a static `gantry`; CONFIG the default configuration (`/etc/gantry/gantry.yaml`).
The archive loads with `podman load -i OUT.tar` or `docker load -i OUT.tar` (Docker 25+), or
unpacks into an OCI layout for runc/crun.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

USER = 65532  # the image's user and group ("nonroot"), owning nothing but its cache


def layer(binary: str, config: str, epoch: int) -> bytes:
    """The image's one layer: the binary, CA certificates, passwd/group, config, cache dir."""
    entries = []

    def add_dir(path, uid=0, mode=0o755):
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
        entries.append((info, None))

    def add_file(path, data, mode=0o644):
        info = tarfile.TarInfo(path)
        info.size, info.mode = len(data), mode
        entries.append((info, data))

    with open(binary, "rb") as f:
        gantry = f.read()
    with open(config, "rb") as f:
        settings = f.read()
    certs = "/etc/ssl/certs/ca-certificates.crt"
    with open(certs, "rb") as f:
        ca = f.read()
    for d in ["etc", "etc/gantry", "etc/ssl", "etc/ssl/certs", "tmp", "var", "var/cache"]:
        add_dir(d, mode=0o1777 if d == "tmp" else 0o755)
    add_dir("var/cache/gantry", uid=USER, mode=0o700)
    add_file("gantry", gantry, 0o755)
    add_file("etc/gantry/gantry.yaml", settings)
    add_file("etc/ssl/certs/ca-certificates.crt", ca)
    add_file("etc/passwd", f"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/var/cache/gantry:/sbin/nologin\n".encode())
    add_file("etc/group", f"root:x:0:\nnonroot:x:{USER}:\n".encode())

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda e: e[0].name):
            info.mtime = epoch
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def blob(files: dict, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    files["blobs/sha256/" + digest.split(":")[1]] = data
    return {"digest": digest, "size": len(data)}


def main() -> None:
    binary, config, out = sys.argv[1:4]
    tag = sys.argv[4] if len(sys.argv) > 4 else "gantry:0.1.0"
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    raw = layer(binary, config, epoch)
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    files: dict = {}
    layer_desc = blob(files, compressed.getvalue())
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    config_json = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["/gantry"],
            "Cmd": ["run", "--config", "/etc/gantry/gantry.yaml"],
            "Env": ["CACHE_DIRECTORY=/var/cache/gantry", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "ExposedPorts": {"9901/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {"org.opencontainers.image.title": "gantry"},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": created, "created_by": "docker/oci.py"}],
    }
    config_desc = blob(files, json.dumps(config_json, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
    }
    manifest_desc = blob(files, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "annotations": {"org.opencontainers.image.ref.name": tag.split(":")[-1],
                            "io.containerd.image.name": tag},
        }],
    }
    files["index.json"] = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["blobs", "blobs/sha256"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, epoch
            tar.addfile(info, io.BytesIO(files[name]))
    print(f"{out}: {tag}, layer {layer_desc['size']} bytes compressed, {len(raw)} uncompressed")


if __name__ == "__main__":
    main()
