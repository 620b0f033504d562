#!/bin/sh
# Build the berth container image without network or base image:
#   1. a statically linked berth (glibc, +crt-static) built on the host;
#   2. a tar holding only that binary (plus the empty folders berth expects);
#   3. `docker import` of the tar, with the entrypoint set.
# Usage: deploy/build-image.sh [TAG]     (default: berth:<version>, also tagged berth:latest)
# The static build goes to target/static so the normal build is not invalidated.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
tag=${1:-berth:$version}
target_dir=${CARGO_TARGET_DIR_STATIC:-$root/target/static}

# BERTH_IMAGE_PROFILE=dev builds an unoptimised binary: the same image, made
# in half the time; the test suite uses it to prove the recipe works offline.
profile=${BERTH_IMAGE_PROFILE:-release}
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac

RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target_dir" \
    cargo build --profile "$profile" --locked --quiet --bin berth --target x86_64-unknown-linux-gnu
binary="$target_dir/x86_64-unknown-linux-gnu/$profile_dir/berth"

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
install -m 0755 "$binary" "$rootfs/berth"
# Debug line tables are for the host's binary; the image needs none.
if command -v strip >/dev/null 2>&1; then strip "$rootfs/berth"; fi
mkdir -p "$rootfs/etc/berth/manifests" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . | docker import \
    -c 'ENTRYPOINT ["/berth"]' \
    -c 'CMD ["run", "--config", "/etc/berth/berth.yaml"]' \
    -c 'ENV RUST_LOG=info' \
    -c 'EXPOSE 9797' \
    -m "berth $version (static binary, docker import)" \
    - "$tag" >/dev/null
if [ "$#" -eq 0 ]; then
    docker tag "$tag" berth:latest
fi
echo "$tag"
