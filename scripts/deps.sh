#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine (idempotent: each
# step is skipped when its tool is already present). Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf thumbv7em-none-eabihf thumbv6m-none-eabi; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

# ONNX Runtime, used as the reference runtime by the parity checks (a shared library inside the
# PyPI wheel; the Rust side loads it dynamically through ORT_DYLIB_PATH).
python3 -c "import onnxruntime" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check "onnxruntime==1.24.*"

command -v defmt-print >/dev/null || cargo install -q --locked defmt-print
