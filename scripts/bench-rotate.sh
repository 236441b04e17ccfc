#!/usr/bin/env bash
# Times one `keyrot rotate --force` (release build, a new process per run) against
# `pkcs11-tool --keygen` of the same key type on the same SoftHSM token, and prints
# both medians and their ratio:
#   1. aes-256 and ec-p256 on a token with fewer than 100 objects;
#   2. aes-256 on tokens with 10, 1,000 and 5,000 objects, to show how both grow.
#
# Every run adds its key to the token (one object per AES key, two per EC key pair),
# so the two commands take turns, run for run, and both see the same token sizes.
# Filler objects are AES keys labelled outside keyrot's `keyrot/` namespace, made by
# examples/fill_token.rs.
#
# Usage: scripts/bench-rotate.sh [WORK_DIR]
# Environment: RUNS (timed runs per command, default 15), SIZES (default
# "10 1000 5000"), KEYROT_BIN (another keyrot binary to time).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

work=${1:-$(mktemp -d)}
runs=${RUNS:-15}
sizes=${SIZES:-10 1000 5000}
mkdir -p "$work"
build_release

# bench_pair DIR KEY_TYPE KEYGEN_ARGS...: times `keyrot rotate --force` of domain
# `bench` and pkcs11-tool with KEYGEN_ARGS in turns on the token of DIR, after one
# untimed run of each, and prints both medians and their ratio.
bench_pair() {
    local dir=$1 key_type=$2
    shift 2
    local objects i
    objects=$(object_count "$dir")
    use_pkcs11_tool "$dir"
    "$keyrot" -q rotate --domain bench --force >/dev/null
    "${p11[@]}" "$@" --label bench-keygen >/dev/null 2>&1
    : >"$dir/keyrot.ms"
    : >"$dir/pkcs11.ms"
    for ((i = 0; i < runs; i++)); do
        time_ms "$keyrot" -q rotate --domain bench --force >>"$dir/keyrot.ms"
        time_ms "${p11[@]}" "$@" --label bench-keygen >>"$dir/pkcs11.ms"
    done
    local k p
    k=$(median <"$dir/keyrot.ms")
    p=$(median <"$dir/pkcs11.ms")
    printf '%-8s %5d objects  keyrot rotate %7.1f ms  pkcs11-tool %7.1f ms  ratio %s\n' \
        "$key_type" "$objects" "$k" "$p" "$(ratio "$k" "$p")"
}

machine
echo "runs per command: $runs, medians; the machine may be shared with other work"
echo
echo "== one rotation on a token with fewer than 100 objects"
new_env "$work/aes" "$(domain_toml bench aes-256)"
fill "$work/aes" 8 filler
bench_pair "$work/aes" aes-256 --keygen --key-type AES:32

new_env "$work/ec" "$(domain_toml bench ec-p256)"
fill "$work/ec" 8 filler
bench_pair "$work/ec" ec-p256 --keypairgen --key-type EC:prime256v1

echo
echo "== aes-256 rotation by token size (objects before the first run)"
for size in $sizes; do
    dir=$work/size-$size
    new_env "$dir" "$(domain_toml bench aes-256)"
    # `keyrot init` created the checkpoint key pair: two objects.
    fill "$dir" $((size - 2)) filler
    bench_pair "$dir" aes-256 --keygen --key-type AES:32
done
