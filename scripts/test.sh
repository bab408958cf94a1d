#!/usr/bin/env bash
# Kestrel's test command: set up the machine, fetch the weights, check formatting, run every test;
# then build `kestrel-edge` for aarch64 and run its tests (and kestrel-shared's) under qemu-aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --aarch64 --vulkan
# Tests that need an outside tool (sshd, Chromium, systemd-analyze) fail when it is missing, unless
# KESTREL_SKIP_<TOOL>=1 asks to skip them: say so up front and at the end.
skips() { env | grep -E '^KESTREL_(SKIP_[A-Z0-9_]+|PARITY_SKIP)=' | sort | tr '\n' ' ' || true; }
SKIPS="$(skips)"
echo "test: skipped on request: ${SKIPS:-nothing}"
cargo build --workspace --all-targets
# The binaries of that build. `cargo run -p` or `cargo test -p` would build the dependencies again
# with the one package's features (cargo's resolver 2), minutes more on a fresh machine.
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
KESTREL="$TARGET_DIR/debug/kestrel"
EDGE="$TARGET_DIR/debug/kestrel-edge"
# The tests use the same weights cache as `kestrel`; fetch once up front so a failure is reported
# plainly instead of inside a test.
"$KESTREL" --quiet fetch-weights
# The trainer needs only the inference core of kestrel-edge (this build of it, alone, has no board
# I/O): no camera, live view, GPIO or mozjpeg crate may creep back into its dependencies.
if cargo tree -p kestrel-trainer -e normal --prefix none \
  | grep -E '^(nokhwa|v4l|mozjpeg|tiny_http|linux-embedded-hal|gpio-cdev)[ -]'; then
  echo "test: kestrel-trainer depends on the board's I/O crates above (see edge-runtime/Cargo.toml's features)" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The wgpu backend (cargo feature `wgpu`, off in the builds above) against flex on tiny models, on
# Mesa's software Vulkan driver (lavapipe); fails when no adapter comes up.
start=$(date +%s)
cargo test -p kestrel-trainer --features wgpu --test wgpu_backend
echo "test: wgpu backend against flex (feature build included) took $(($(date +%s) - start)) s"

# aarch64, the boards' architecture. The parity test compares the aarch64 build's embeddings with
# x86 references made here: a small trunk (features.2, 28 KB) exported by `kestrel` and the
# output of the x86 `kestrel-edge embed --values` on the sample photos
# (edge-runtime/tests/aarch64_parity.rs explains the protocol).
AARCH64=aarch64-unknown-linux-gnu
PARITY_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kestrel-parity.XXXXXX")"
trap 'rm -rf "$PARITY_DIR"' EXIT
"$KESTREL" --quiet export-trunk --cut features.2 \
  --out "$PARITY_DIR/trunk" >/dev/null
"$EDGE" embed --values --trunk "$PARITY_DIR/trunk" \
  "$PWD/host-trainer/assets/chelsea.png" "$PWD/host-trainer/assets/coffee.png" \
  >"$PARITY_DIR/reference.jsonl"
# A small detector as fp32 and int8 bundles, JPEG frames, and the x86 runtime's detections on them
# (the frozen trunk, features.0-13, whose kernels the parity test counts).
"$KESTREL" --quiet synth detect --preset multi --seed 2 \
  --count 40 --val-count 8 --width 160 --height 120 --out "$PARITY_DIR/scenes" >/dev/null
"$KESTREL" --quiet train detect --data "$PARITY_DIR/scenes" --fine-tune-blocks 0 \
  --width 160 --height 120 --epochs 3 --out "$PARITY_DIR/run" >/dev/null
"$KESTREL" --quiet export "$PARITY_DIR/run" --quantize none \
  --out "$PARITY_DIR/bundle" >/dev/null
"$KESTREL" --quiet export "$PARITY_DIR/run" --quantize all \
  --calibration 8 --out "$PARITY_DIR/bundle-int8" >/dev/null
"$EDGE" capture --label frames --count 8 \
  --out "$PARITY_DIR" --source "dir:$PARITY_DIR/scenes/images/val" 2>/dev/null
for b in bundle bundle-int8; do
  "$EDGE" run --bundle "$PARITY_DIR/$b" \
    --source "dir:$PARITY_DIR/frames" --score-threshold 0 >"$PARITY_DIR/$b-reference.jsonl"
done
export KESTREL_PARITY_DIR="$PARITY_DIR"
# On x86 the parity test is ignored by default; run it here to check the reference itself.
cargo test -q --workspace --test aarch64_parity -- --include-ignored
start=$(date +%s)
cargo build -p kestrel-edge --target "$AARCH64" --all-targets
echo "test: aarch64 build of kestrel-edge and its tests took $(($(date +%s) - start)) s"
aarch64-linux-gnu-strip -o "$PARITY_DIR/kestrel-edge.stripped" "$TARGET_DIR/$AARCH64/debug/kestrel-edge"
echo "test: aarch64 kestrel-edge (dev profile), stripped: $(stat -c %s "$PARITY_DIR/kestrel-edge.stripped") bytes"
# The SSH journey with that binary as the board (under qemu as a Pi 4's core): deploy, the agent's
# detections back through `kestrel monitor --ssh`, the same mAP as the bundle.
start=$(date +%s)
KESTREL_AARCH64_EDGE="$PARITY_DIR/kestrel-edge.stripped" cargo test --workspace --test journey -- \
  --ignored the_ssh_journey_with_the_boards_own_binary_under_qemu
echo "test: the SSH journey with the aarch64 agent under qemu took $(($(date +%s) - start)) s"
# The runner in .cargo/config.toml runs each test binary under qemu-aarch64 (the Pi 4's A72).
cargo test -p kestrel-edge -p kestrel-shared --target "$AARCH64"
# Kestrel's NEON kernels against tract's own ops on the Pi 5's core as well.
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu" \
  cargo test -p kestrel-edge --target "$AARCH64" --lib kernels
# The aarch64 parity tests (fp32 and int8 bundles) on the Pi 5's core too.
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu" \
  cargo test -p kestrel-edge --target "$AARCH64" --test aarch64_parity
# The board build (the `board` features without the defaults: no ONNX reader, one JPEG codec) runs
# the bundles' NNEF files and must give the x86 detections too.
start=$(date +%s)
cargo test -p kestrel-edge --no-default-features --features board --target "$AARCH64" \
  --test aarch64_parity bundle_detections
echo "test: aarch64 board-feature build and parity took $(($(date +%s) - start)) s"
# A board build needs no nasm (mozjpeg's aarch64 SIMD is C): build the JPEG library for aarch64
# from scratch with nasm made unrunnable (a private mount namespace; root only, as CI runs).
NASM_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kestrel-nonasm.XXXXXX")"
unshare -m sh -c 'mount --bind /dev/null "$(command -v nasm)" && ! nasm -v 2>/dev/null &&
  CARGO_TARGET_DIR="$1" cargo build -q -p mozjpeg-sys --target "$2"' sh "$NASM_DIR" "$AARCH64"
rm -rf "$NASM_DIR"
echo "test: mozjpeg for aarch64 built without nasm"
echo "test: all passed; skipped on request: ${SKIPS:-nothing}"
