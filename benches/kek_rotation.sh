#!/usr/bin/env bash
# What rotating keys costs with 100,000 sealed secrets of 1 KiB, on Postgres and on SQLite,
# with a key-encryption key in an HSM (SoftHSM2) and in AWS KMS (moto, local) against a
# keyring file's full re-seal:
#
#   file -> HSM      rotate-keys --new-kek pkcs11:A   the file's key stored as a data key
#   HSM -> HSM       rotate-keys --new-kek pkcs11:B   the data keys re-wrapped (a KEK rotation)
#   HSM -> KMS       rotate-keys --new-kek awskms:C   the same, onto a KMS key
#   KMS -> KMS       rotate-keys --new-kek awskms:D   a KEK rotation in KMS
#   full re-seal     a new key in the file, rotate-keys: every value re-sealed (what a
#                    keyring file's rotation costs)
#
# Each step is the whole command (start, HSM session or KMS client, transaction), timed by
# /usr/bin/time; after the HSM and KMS steps every value is read back through an export
# with KEK D. moto answers on loopback: AWS KMS in the same region adds its round trips
# (a few ms each; one to open the key, two per data key).
#
#   bash benches/kek_rotation.sh [SECRETS]      # default 100000
#
# Installs softhsm2 and moto (pinned) if missing. Uses DATABASE_URL (default the local Postgres) and creates,
# then drops, the database ks_kek_bench on it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECRETS=${1:-100000}
DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_URL="${DATABASE_URL%/*}/ks_kek_bench"
MODULE=/usr/lib/softhsm/libsofthsm2.so
[[ -e $MODULE ]] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; }
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
command -v moto_server >/dev/null || pip install --quiet 'moto[server]==5.2.1'

cargo build --release --quiet --features awskms
BIN=$PWD/target/release/kuma-secrets
WORK=$(mktemp -d)
cleanup() {
    [[ -n ${MOTO_PID:-} ]] && kill "$MOTO_PID" 2>/dev/null
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_kek_bench WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A token of this run's own.
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
export SOFTHSM2_CONF=$WORK/softhsm2.conf
softhsm2-util --init-token --free --label bench --pin 4711 --so-pin 0815 >/dev/null
echo 4711 >"$WORK/pin"
chmod 600 "$WORK/pin"
kek() { echo "pkcs11:token=bench;object=$1?module-path=$MODULE&pin-source=file:$WORK/pin"; }
"$BIN" generate kek "$(kek a)" >/dev/null
"$BIN" generate kek "$(kek b)" >/dev/null

# A KMS of this run's own.
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
MOTO_PID=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.1; done
kms() { echo "awskms:alias/$1?region=us-east-1&endpoint=http://127.0.0.1:$MOTO_PORT"; }

python3 benches/secrets_yaml.py "$SECRETS" >"$WORK/secrets.yaml"

timed() { # LABEL COMMAND... -> prints "| LABEL | seconds |"
    local label=$1
    shift
    /usr/bin/time -f "%e" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    echo "| $label | $(cat "$WORK/time") s |"
}

echo "$SECRETS secrets of 1 KiB, sealed; each step the whole command, release build"
echo
echo "| store: step | time |"
echo "|---|---:|"
psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_kek_bench WITH (FORCE)" -c "CREATE DATABASE ks_kek_bench" >/dev/null
"$BIN" migrate up --store "$PG_URL" >/dev/null
for store in "$PG_URL" "sqlite://$WORK/bench.db"; do
    name=$([[ $store == postgres* ]] && echo Postgres || echo SQLite)
    rm -f "$WORK/keys.yaml"
    "$BIN" generate encryption-key --keyring "$WORK/keys.yaml" >/dev/null
    timed "$name: import (keyring file)" "$BIN" import -f "$WORK/secrets.yaml" --store "$store" --encryption-keys "$WORK/keys.yaml"
    timed "$name: file -> HSM (--new-kek)" "$BIN" rotate-keys --store "$store" --encryption-keys "$WORK/keys.yaml" --new-kek "$(kek a)"
    timed "$name: HSM -> HSM, KEK rotation (--new-kek)" "$BIN" rotate-keys --store "$store" --encryption-keys "$(kek a)" --new-kek "$(kek b)"
    "$BIN" generate kek "$(kms "c-$name")" >/dev/null
    "$BIN" generate kek "$(kms "d-$name")" >/dev/null
    timed "$name: HSM -> KMS (--new-kek)" "$BIN" rotate-keys --store "$store" --encryption-keys "$(kek b)" --new-kek "$(kms "c-$name")"
    timed "$name: KMS -> KMS, KEK rotation (--new-kek)" "$BIN" rotate-keys --store "$store" --encryption-keys "$(kms "c-$name")" --new-kek "$(kms "d-$name")"
    "$BIN" export --store "$store" --encryption-keys "$(kms "d-$name")" -o "$WORK/export.yaml" >/dev/null 2>&1
    read_back=$(grep -c '^type: Secret' "$WORK/export.yaml")
    [[ $read_back -eq $SECRETS ]] || { echo "only $read_back of $SECRETS secrets read back with KEK d" >&2; exit 1; }
    "$BIN" generate encryption-key --keyring "$WORK/keys.yaml" --activate >/dev/null
    timed "$name: full re-seal (keyring file, rotate-keys)" "$BIN" rotate-keys --store "$store" --encryption-keys "$WORK/keys.yaml"
done
echo
echo "(every one of the $SECRETS values read back through an export with KMS KEK d after the HSM and KMS steps, on each store)"
