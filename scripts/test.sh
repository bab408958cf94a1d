#!/usr/bin/env bash
# Kestrel's test command: set up the machine, fetch the weights, check formatting, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
# The tests use the same weights cache as `kestrel`; fetch once up front so a failure is reported
# plainly instead of inside a test.
cargo run -q -p kestrel-trainer --bin kestrel -- --quiet fetch-weights
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
