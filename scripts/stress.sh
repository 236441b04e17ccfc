#!/usr/bin/env bash
# Rotates one domain 200 times (KEYROT_STRESS_ROUNDS to change), killing each run
# at a random failpoint or after a random delay and recovering it with the same run
# id; any divergence between ledger, token and audit trail fails. Prints the counts.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo test --features failpoints --test crash -- --include-ignored --nocapture stress_random_kills
