# Helpers shared by the bench-*.sh scripts; sourced, not run.
#
# Each benchmark works on throwaway SoftHSM tokens under a work folder. The user
# PIN is random, kept in a 0600 file and never printed. Timings are wall times of
# whole processes, taken with bash's $EPOCHREALTIME.

module=/usr/lib/softhsm/libsofthsm2.so
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# KEYROT_BIN selects another keyrot binary, for comparing two builds.
keyrot=${KEYROT_BIN:-$root/target/release/keyrot}
fill_token=$root/target/release/examples/fill_token

# Builds the release binary and the token filler.
build_release() {
    (cd "$root" && cargo build --release --quiet --bin keyrot --example fill_token)
}

# new_env DIR DOMAIN_TOML: creates a token, PIN file and keyrot.toml in DIR, with
# the [[domain]] tables in DOMAIN_TOML, and runs `keyrot init`. Exports
# SOFTHSM2_CONF and KEYROT_CONFIG for DIR.
new_env() {
    local dir=$1 domains=$2
    rm -rf "$dir"
    mkdir -p "$dir/tokens"
    chmod 700 "$dir"
    cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
CONF
    export SOFTHSM2_CONF=$dir/softhsm2.conf
    export KEYROT_CONFIG=$dir/keyrot.toml
    (
        umask 077
        od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$dir/pin"
        od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$dir/so-pin"
    )
    softhsm2-util --init-token --free --label keyrot-bench \
        --so-pin "$(cat "$dir/so-pin")" --pin "$(cat "$dir/pin")" >/dev/null
    cat >"$KEYROT_CONFIG" <<CONF
[hsm]
module = "$module"
token_label = "keyrot-bench"
pin_file = "pin"

[storage]
ledger = "ledger.db"
audit_log = "audit.jsonl"
lock_dir = "locks"

[log]
dir = "logs"
level = "warn"

[access]
scheduler_users = ["$(id -un)"]
emergency_users = ["$(id -un)"]

$domains
CONF
    "$keyrot" -q init >/dev/null
}

# domain_toml NAME KEY_TYPE [ROTATE_EVERY]: one [[domain]] table with no
# min_interval and a budget that no benchmark reaches.
domain_toml() {
    cat <<CONF
[[domain]]
name = "$1"
key_type = "$2"
rotate_every = "${3:-90d}"
min_interval = "0s"
max_per_day = 1000000
keep_deprecated = 2

CONF
}

# many_domains_toml COUNT ROTATE_EVERY: COUNT aes-256 domains named d0000, d0001, …
many_domains_toml() {
    local i
    for ((i = 0; i < $1; i++)); do
        domain_toml "$(printf 'd%04d' "$i")" aes-256 "$2"
    done
}

# fill DIR COUNT PREFIX: adds COUNT AES keys labelled PREFIX-N (outside keyrot/).
fill() {
    [ "$2" -gt 0 ] || return 0
    "$fill_token" "$module" keyrot-bench "$1/pin" "$2" "$3"
}

# object_count DIR: number of objects on the token of DIR.
object_count() {
    find "$1/tokens" -name '*.object' ! -name token.object | wc -l
}

# use_pkcs11_tool DIR: sets the array p11 to a pkcs11-tool command logged in to the
# token of DIR. The PIN is read once here, so that timed runs do not include it,
# and it is on that command line: keep p11 out of any output.
use_pkcs11_tool() {
    p11=(pkcs11-tool --module "$module" --token-label keyrot-bench --login
        --pin "$(cat "$1/pin")")
}

# time_ms COMMAND...: runs COMMAND with its output discarded and prints its wall
# time in milliseconds. Fails when COMMAND fails.
time_ms() {
    local start=$EPOCHREALTIME
    "$@" >/dev/null 2>&1 || {
        echo "failed with exit code $?: $1" >&2
        return 1
    }
    local end=$EPOCHREALTIME
    echo "($end - $start) * 1000" | bc -l
}

# median: median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}

# ratio A B: A / B with two decimals.
ratio() {
    echo "scale=2; $1 / $2" | bc -l
}

# machine: one line describing where the figures were taken.
machine() {
    local model
    model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
    echo "machine: $(nproc) cores, ${model:-unknown CPU}, SoftHSM $(softhsm2-util --version)," \
        "load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
