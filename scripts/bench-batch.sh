#!/usr/bin/env bash
# Times `keyrot rotate --all-due` over DOMAINS due aes-256 domains against DOMAINS
# single `keyrot rotate --domain` invocations, one per domain, and prints the totals
# and their ratio.
#
# Two identical environments are prepared: DOMAINS domains with rotate_every = 1s,
# each rotated once by an untimed batch, so the token starts with DOMAINS + 2
# objects. The batch runs on one, BATCH_RUNS times, and the token grows by DOMAINS
# objects per run, so later runs see a larger token. The single invocations run on
# the other, each domain once. Every domain is due at each timed run.
#
# Usage: scripts/bench-batch.sh [WORK_DIR]
# Environment: DOMAINS (default 1000), BATCH_RUNS (default 3), KEYROT_BIN.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

work=${1:-$(mktemp -d)}
domains=${DOMAINS:-1000}
batch_runs=${BATCH_RUNS:-3}
mkdir -p "$work"
build_release

machine
echo "domains: $domains; the machine may be shared with other work"

toml=$(many_domains_toml "$domains" 1s)
for side in batch single; do
    new_env "$work/$side" "$toml"
    "$keyrot" -q rotate --all-due >/dev/null
done
sleep 1

export SOFTHSM2_CONF=$work/batch/softhsm2.conf KEYROT_CONFIG=$work/batch/keyrot.toml
objects=$(object_count "$work/batch")
: >"$work/batch.ms"
for ((run = 0; run < batch_runs; run++)); do
    time_ms "$keyrot" -q rotate --all-due >>"$work/batch.ms"
    sleep 1
done
batch=$(median <"$work/batch.ms")
printf 'rotate --all-due, %d domains, %d objects before: median of %d runs %.0f ms (%s)\n' \
    "$domains" "$objects" "$batch_runs" "$batch" "$(sort -g "$work/batch.ms" | awk '{printf "%.0f ", $1}')"

export SOFTHSM2_CONF=$work/single/softhsm2.conf KEYROT_CONFIG=$work/single/keyrot.toml
objects=$(object_count "$work/single")
: >"$work/single.ms"
for ((i = 0; i < domains; i++)); do
    time_ms "$keyrot" -q rotate --domain "$(printf 'd%04d' "$i")" >>"$work/single.ms"
done
single_total=$(awk '{ t += $1 } END { print t }' "$work/single.ms")
single_median=$(median <"$work/single.ms")
printf '%d x rotate --domain, %d objects before: total %.0f ms, median per run %.1f ms\n' \
    "$domains" "$objects" "$single_total" "$single_median"
printf 'ratio single total / batch median: %s (target: at least 8)\n' \
    "$(ratio "$single_total" "$batch")"
