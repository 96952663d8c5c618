"""Independent OCI clients for neoc's registry tests.

Pushes and pulls with the `oras` Python SDK (PyPI `oras`), and writes raw
distribution-API requests (with `requests`) for artifacts no well-behaved
client would make. Usage:

  oci_tool.py oras-push HOST REPO:TAG [--config FILE:MEDIATYPE] [FILE[:MEDIATYPE] ...]
  oci_tool.py oras-pull HOST REPO:TAG OUTDIR
  oci_tool.py docker-image HOST REPO:TAG FILE     (a Docker v2 image manifest)
"""

import hashlib
import json
import os
import sys

import oras.client
import requests


def oras_push(host, ref, files, config=None):
    c = oras.client.OrasClient(hostname=host, insecure=True)
    # oras validates that files are under the working directory
    c.push(
        target=f"{host}/{ref}",
        files=files,
        manifest_config=config,
        disable_path_validation=True,
    )


def oras_pull(host, ref, outdir):
    c = oras.client.OrasClient(hostname=host, insecure=True)
    for p in c.pull(target=f"{host}/{ref}", outdir=outdir):
        print(p)


def upload(host, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    r = requests.put(f"{loc}{sep}digest={digest}", data=data, headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return {"digest": digest, "size": len(data)}


def docker_image(host, ref, path):
    repo, tag = ref.rsplit(":", 1)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cfg = upload(host, repo, config)
    layer = upload(host, repo, open(path, "rb").read())
    mt = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **layer}],
    }
    r = requests.put(f"http://{host}/v2/{repo}/manifests/{tag}", data=json.dumps(manifest), headers={"Content-Type": mt})
    r.raise_for_status()


def main(argv):
    cmd, host, ref = argv[1], argv[2], argv[3]
    rest = argv[4:]
    if cmd == "oras-push":
        config = None
        if rest[:1] == ["--config"]:
            config, rest = rest[1], rest[2:]
        oras_push(host, ref, rest, config)
    elif cmd == "oras-pull":
        oras_pull(host, ref, rest[0])
    elif cmd == "docker-image":
        docker_image(host, ref, rest[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
