#!/usr/bin/env bash
# Builds the neorun container image with buildah (no daemon, no base image
# to pull): FROM scratch, the neorun binary, the shared libraries it links
# (as ldd lists them), the CA certificates (S3 and SNS over TLS), the
# signer's public key at /etc/neorun/trusted.pub, and an empty /tmp.
#
#   bash contrib/container/build.sh --key KEY.pub [--tag neorun:TAG] [--binary PATH]
#
# --binary defaults to the size-optimised device build (target/dist/neorun,
# built here when missing). Runs as root or rootless; storage is buildah's
# vfs driver and isolation chroot, so it also builds inside a container.
# Prints the image's size. Push it with `buildah push`, or `skopeo copy
# containers-storage:IMAGE docker://REGISTRY/IMAGE`. BUILDAH_OPTS replaces
# buildah's global options (default: --storage-driver vfs), e.g. to add
# --root DIR --runroot DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
key="" tag="neorun:latest" binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) key="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    *) echo "unknown argument $1; usage: build.sh --key KEY.pub [--tag neorun:TAG] [--binary PATH]" >&2; exit 2 ;;
  esac
done
[ -n "$key" ] || { echo "--key KEY.pub is required: the public key bundles must be signed with (neoc keygen makes one)" >&2; exit 2; }
head -c 200 "$key" | grep -q "minisign public key" \
  || { echo "$key is not a minisign public key (.pub)" >&2; exit 2; }
command -v buildah >/dev/null || { echo "buildah is needed: apt-get install buildah" >&2; exit 1; }
if [ -z "$binary" ]; then
  binary=target/dist/neorun
  [ -x "$binary" ] || cargo build --profile dist --locked -p neorun
fi
[ -x "$binary" ] || { echo "$binary is not an executable" >&2; exit 2; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/bin" "$root/etc/neorun" "$root/etc/ssl/certs" "$root/tmp" "$root/opt/ml/model" "$root/mnt/models"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/bin/neorun"
cp "$key" "$root/etc/neorun/trusted.pub"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
# the libraries neorun links, under the paths the loader looks in
for lib in $(ldd "$binary" | awk '/=> \//{print $3} $1 ~ /^\//{print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/usr/bin/neorun\nneorun:x:65532:65532:neorun:/tmp:/usr/bin/neorun\n' > "$root/etc/passwd"
printf 'root:x:0:\nneorun:x:65532:\n' > "$root/etc/group"
cp contrib/container/Containerfile "$ctx/"
opts=${BUILDAH_OPTS:---storage-driver vfs}
# shellcheck disable=SC2086
buildah $opts bud --isolation chroot --quiet -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
echo "built $tag: $(buildah $opts images --format '{{.Size}}' "$tag") (neorun $(stat -c %s "$binary") bytes)"
