#!/usr/bin/env bash
# Installs the test dependencies and runs every test against real SoftHSM tokens.
# The failpoints feature compiles the crash hooks that the recovery tests use;
# release builds never contain them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --features failpoints -- -D warnings
cargo test --features failpoints --all-targets "$@"
