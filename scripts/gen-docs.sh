#!/usr/bin/env bash
# Regenerates the manual pages (man/*.1, man/keyrot.toml.5) and the shell
# completions (man/completions/) from the clap definition, and removes generated
# files that no longer have a source. Run it after changing a command, an option,
# a help text or the crate version; tests/docs.rs fails until the output is committed.
#
# Extra arguments go to cargo, so `scripts/gen-docs.sh --features failpoints`
# reuses the build that the tests made.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet "$@" --example gen_docs
