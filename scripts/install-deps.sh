#!/usr/bin/env bash
# Installs what keyrot's demo, tests and benchmarks need on a Debian machine:
# SoftHSM2 (the PKCS#11 token), OpenSC's pkcs11-tool (the benchmark peer),
# sqlite3, and hyperfine and jq for scripts/bench-status.sh. Does nothing when they
# are present.
set -euo pipefail

missing=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null || missing+=(opensc)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v jq >/dev/null || missing+=(jq)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
