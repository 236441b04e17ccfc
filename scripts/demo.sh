#!/usr/bin/env bash
# Runs keyrot's main job on a throwaway SoftHSM token: installs SoftHSM2 if
# missing, builds keyrot, creates a token, PIN file, configuration, ledger and
# audit trail under build/demo, rotates two domains, shows the status and
# verifies the audit trail. Everything it creates stays under build/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh
cargo build --release --quiet
keyrot=$root/target/release/keyrot

demo=$root/build/demo
rm -rf "$demo"
mkdir -p "$demo/tokens"
chmod 700 "$demo"
cat >"$demo/softhsm2.conf" <<CONF
directories.tokendir = $demo/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF=$demo/softhsm2.conf

# A fresh random PIN, kept in a 0600 file and never printed.
umask 077
pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
so_pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$pin" >"$demo/pin"
softhsm2-util --init-token --free --label keyrot-demo --so-pin "$so_pin" --pin "$pin" >/dev/null
unset pin so_pin

cat >"$demo/keyrot.toml" <<CONF
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyrot-demo"
pin_file = "pin"

[storage]
ledger = "ledger.db"
audit_log = "audit.jsonl"
lock_dir = "locks"

[log]
dir = "logs"
level = "info"

# The demo's own account may run scheduled and emergency commands; an empty list
# would admit nobody.
[access]
scheduler_users = ["$(id -un)"]
emergency_users = ["$(id -un)"]

[[domain]]
name = "payments"
key_type = "aes-256"
rotate_every = "90d"
min_interval = "1d"

[[domain]]
name = "signing"
key_type = "ec-p256"
rotate_every = "30d"
min_interval = "1h"
CONF
export KEYROT_CONFIG=$demo/keyrot.toml

run() {
    echo "\$ keyrot $*"
    "$keyrot" "$@"
    echo
}
run init
run rotate --domain payments --run-id demo-0001
run rotate --domain signing --run-id demo-0002
run rotate --domain payments --run-id demo-0003
run status
run audit-verify "$demo/audit.jsonl" --pubkey "$demo/audit.pub.pem" --ledger "$demo/ledger.db"

cat <<DONE
Demo files (all under $demo):
  configuration  $demo/keyrot.toml
  SoftHSM token  $demo/tokens (SOFTHSM2_CONF=$demo/softhsm2.conf)
  ledger         $demo/ledger.db
  audit trail    $demo/audit.jsonl
  public key     $demo/audit.pub.pem
  logs           $demo/logs
Try: KEYROT_CONFIG=$demo/keyrot.toml SOFTHSM2_CONF=$demo/softhsm2.conf $keyrot status
DONE
