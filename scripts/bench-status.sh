#!/usr/bin/env bash
# Times `keyrot status` against `sqlite3 LEDGER 'select * from keys'` on the same
# ledger, for 3 domains and for DOMAINS domains (each rotated once), and prints both
# medians and their ratio. `keyrot status` reads the ledger only and never loads the
# HSM module.
#
# Needs hyperfine and jq (scripts/install-deps.sh installs them).
#
# Usage: scripts/bench-status.sh [WORK_DIR]
# Environment: RUNS (default 50), DOMAINS (default 1000), KEYROT_BIN.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

work=${1:-$(mktemp -d)}
runs=${RUNS:-50}
domains=${DOMAINS:-1000}
mkdir -p "$work"
build_release

machine
echo "runs per command: $runs, medians; the machine may be shared with other work"

for count in 3 "$domains"; do
    dir=$work/status-$count
    new_env "$dir" "$(many_domains_toml "$count" 90d)"
    "$keyrot" -q rotate --all-due >/dev/null
    "$keyrot" -q status >/dev/null
    # hyperfine starts each command without a shell (-N), so bash's own fork does
    # not inflate a few milliseconds. status changes nothing, so the two commands
    # need not take turns.
    hyperfine -N --style none --warmup 5 --runs "$runs" --export-json "$dir/times.json" \
        -n keyrot "$keyrot -q status" \
        -n sqlite3 "sqlite3 $dir/ledger.db 'select * from keys'" >/dev/null 2>"$dir/hyperfine.err" ||
        { cat "$dir/hyperfine.err" >&2; exit 1; }
    k=$(jq -r '.results[] | select(.command == "keyrot") | .median * 1000' "$dir/times.json")
    s=$(jq -r '.results[] | select(.command == "sqlite3") | .median * 1000' "$dir/times.json")
    printf '%5d domains  keyrot status %6.2f ms  sqlite3 select %6.2f ms  ratio %s (target: under 3 ms)\n' \
        "$count" "$k" "$s" "$(ratio "$k" "$s")"
done
