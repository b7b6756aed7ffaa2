#!/usr/bin/env bash
# What rotating keys costs with 100,000 sealed secrets of 1 KiB, on Postgres and on SQLite,
# with a key-encryption key in an HSM (SoftHSM2) against a keyring file's full re-seal:
#
#   file -> HSM      rotate-keys --new-kek pkcs11:A   the file's key stored as a data key
#   HSM -> HSM       rotate-keys --new-kek pkcs11:B   the data keys re-wrapped (a KEK rotation)
#   full re-seal     a new key in the file, rotate-keys: every value re-sealed (what a
#                    keyring file's rotation costs)
#
# Each step is the whole command (start, HSM session, transaction), timed by /usr/bin/time;
# after the HSM steps every value is read back through an export with KEK B.
#
#   bash benches/kek_rotation.sh [SECRETS]      # default 100000
#
# Installs softhsm2 if missing. Uses DATABASE_URL (default the local Postgres) and creates,
# then drops, the database ks_kek_bench on it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECRETS=${1:-100000}
DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_URL="${DATABASE_URL%/*}/ks_kek_bench"
MODULE=/usr/lib/softhsm/libsofthsm2.so
[[ -e $MODULE ]] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; }
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

cargo build --release --quiet
BIN=$PWD/target/release/kuma-secrets
WORK=$(mktemp -d)
cleanup() {
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
    "$BIN" export --store "$store" --encryption-keys "$(kek b)" -o "$WORK/export.yaml" >/dev/null 2>&1
    read_back=$(grep -c '^type: Secret' "$WORK/export.yaml")
    [[ $read_back -eq $SECRETS ]] || { echo "only $read_back of $SECRETS secrets read back with KEK b" >&2; exit 1; }
    "$BIN" generate encryption-key --keyring "$WORK/keys.yaml" --activate >/dev/null
    timed "$name: full re-seal (keyring file, rotate-keys)" "$BIN" rotate-keys --store "$store" --encryption-keys "$WORK/keys.yaml"
done
echo
echo "(every one of the $SECRETS values read back through an export with KEK b after the HSM steps, on each store)"
