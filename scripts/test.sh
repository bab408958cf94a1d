#!/usr/bin/env bash
# Kestrel's test command: set up the machine, fetch the weights, check formatting, run every test;
# then build `kestrel-edge` for aarch64 and run its tests (and kestrel-shared's) under qemu-aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --aarch64
cargo build --workspace --all-targets
# The tests use the same weights cache as `kestrel`; fetch once up front so a failure is reported
# plainly instead of inside a test.
cargo run -q -p kestrel-trainer --bin kestrel -- --quiet fetch-weights
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# aarch64, the boards' architecture. The parity test compares the aarch64 build's embeddings with
# x86 references made here: a small trunk (features.2, 28 KB) exported by `kestrel` and the
# output of the x86 `kestrel-edge embed --values` on the sample photos
# (edge-runtime/tests/aarch64_parity.rs explains the protocol).
AARCH64=aarch64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PARITY_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kestrel-parity.XXXXXX")"
trap 'rm -rf "$PARITY_DIR"' EXIT
cargo run -q -p kestrel-trainer --bin kestrel -- --quiet export-trunk --cut features.2 \
  --out "$PARITY_DIR/trunk" >/dev/null
cargo run -q -p kestrel-edge --bin kestrel-edge -- embed --values --trunk "$PARITY_DIR/trunk" \
  "$PWD/host-trainer/assets/chelsea.png" "$PWD/host-trainer/assets/coffee.png" \
  >"$PARITY_DIR/reference.jsonl"
export KESTREL_PARITY_DIR="$PARITY_DIR"
# On x86 the parity test is ignored by default; run it here to check the reference itself.
cargo test -q -p kestrel-edge --test aarch64_parity -- --include-ignored
start=$(date +%s)
cargo build -p kestrel-edge --target "$AARCH64" --all-targets
echo "test: aarch64 build of kestrel-edge and its tests took $(($(date +%s) - start)) s"
aarch64-linux-gnu-strip -o "$PARITY_DIR/kestrel-edge.stripped" "$TARGET_DIR/$AARCH64/debug/kestrel-edge"
echo "test: aarch64 kestrel-edge (dev profile), stripped: $(stat -c %s "$PARITY_DIR/kestrel-edge.stripped") bytes"
# The runner in .cargo/config.toml runs each test binary under qemu-aarch64.
cargo test -p kestrel-edge -p kestrel-shared --target "$AARCH64"
