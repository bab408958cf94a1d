#!/usr/bin/env bash
# Kestrel's main job on a fresh machine: set up, build, and run `kestrel demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q --workspace --bins
cargo run -q -p kestrel-trainer --bin kestrel -- demo "$@"
