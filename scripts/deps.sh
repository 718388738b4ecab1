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
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3)
# A Vulkan driver that runs on the CPU (Mesa's lavapipe) and the Vulkan loader: the trainer's GPU
# path (`--features wgpu`) is tested on it (trainer/tests/gpu.rs), CI having no GPU.
compgen -G "/usr/share/vulkan/icd.d/lvp_icd.*.json" >/dev/null || need_apt+=(mesa-vulkan-drivers libvulkan1)
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
components=$(rustup component list --installed)
for c in clippy rustfmt; do
  grep -q "^$c" <<<"$components" || rustup component add "$c"
done

# ONNX Runtime, used as the reference runtime by the parity checks (a shared library inside the
# PyPI wheel; the Rust side loads it dynamically through ORT_DYLIB_PATH, which
# scripts/ort-dylib.sh finds). Into the system's Python where pip may install; where it may not
# (Debian's own Python refuses, PEP 668, or has no pip) into a virtual environment under target/.
if ! scripts/ort-dylib.sh >/dev/null 2>&1; then
  if ! python3 -m pip install -q --disable-pip-version-check "onnxruntime==1.24.*" 2>/dev/null; then
    echo "deps: onnxruntime into target/ort-venv"
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    python3 -m venv target/ort-venv
    target/ort-venv/bin/python -m pip install -q --disable-pip-version-check "onnxruntime==1.24.*"
  fi
fi

# Pinned: a later release may need a newer Rust or decode another defmt wire format.
command -v defmt-print >/dev/null || cargo install -q --locked defmt-print --version 1.2.0
