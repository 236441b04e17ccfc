#!/usr/bin/env bash
# Benchmarks audit chain verification against `openssl dgst -sha256` on the same file.
#
# Builds a valid chain of LINES lines (default 1,000,000, a checkpoint every 1,000)
# with examples/gen_chain.rs, then times:
#   - examples/verify_chain (the library verifier, with --pubkey),
#   - target/release/keyrot audit-verify FILE --pubkey PEM, when that binary exists,
#   - openssl dgst -sha256 FILE,
# and prints MB/s for each, the ratio to openssl, and the verifier's peak RSS.
#
# Usage: scripts/bench-audit-verify.sh [LINES] [WORK_DIR]
set -euo pipefail

lines=${1:-1000000}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cargo build --release --quiet --examples
chain="$work/chain.jsonl"
pem="$work/pubkey.pem"
target/release/examples/gen_chain "$chain" "$lines" "$pem"
bytes=$(stat -c %s "$chain")

# Reads the file once so that every timed run starts from the page cache.
cat "$chain" >/dev/null

# Prints "<seconds> <peak RSS in KiB>" for one run of a command. Peak RSS comes from
# GNU time when installed, else from polling VmHWM in /proc.
measure() {
    local start end peak=0
    start=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null 2>&1
        peak=$(tail -1 "$work/rss")
    else
        "$@" >/dev/null 2>&1 &
        local pid=$! rss
        while kill -0 "$pid" 2>/dev/null; do
            rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            [ "${rss:-0}" -gt "$peak" ] && peak=$rss
            sleep 0.01
        done
        wait "$pid"
    fi
    end=$(date +%s.%N)
    echo "$(echo "$end - $start" | bc -l) $peak"
}

mbps() { echo "scale=1; $bytes / 1000000 / $1" | bc -l; }

read -r t_lib rss_lib < <(measure target/release/examples/verify_chain "$chain" --pubkey "$pem")
read -r t_ssl rss_ssl < <(measure openssl dgst -sha256 "$chain")

printf 'file: %s, %d lines, %d bytes\n' "$chain" "$lines" "$bytes"
printf '%-28s %8.3f s %8s MB/s  peak RSS %s KiB\n' "verify_chain --pubkey" "$t_lib" "$(mbps "$t_lib")" "$rss_lib"
if [ -x target/release/keyrot ] && target/release/keyrot audit-verify --help >/dev/null 2>&1; then
    read -r t_cli rss_cli < <(measure target/release/keyrot audit-verify "$chain" --pubkey "$pem")
    printf '%-28s %8.3f s %8s MB/s  peak RSS %s KiB\n' "keyrot audit-verify --pubkey" "$t_cli" "$(mbps "$t_cli")" "$rss_cli"
else
    echo "keyrot audit-verify: not built yet, skipped"
fi
printf '%-28s %8.3f s %8s MB/s  peak RSS %s KiB\n' "openssl dgst -sha256" "$t_ssl" "$(mbps "$t_ssl")" "$rss_ssl"
printf 'ratio verify_chain / openssl throughput: %s\n' "$(echo "scale=2; $t_ssl / $t_lib" | bc -l)"
