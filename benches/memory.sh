#!/usr/bin/env bash
# Peak memory (max RSS) of the bulk tools and of `serve`, with 100,000 secrets of 1 KiB:
#
#   import   a YAML file of every secret, into Postgres and into SQLite
#   export   the Postgres store to a file
#   copy     the Postgres store into a new SQLite file (with verification)
#   serve    on the Postgres store, after walking every page of the list (pages of 100,
#            following `next`) and a wrk load test (GET and PUT over every name)
#
#   bash benches/memory.sh [SECRETS]        # default 100000
#
# Targets: the tools at most 64 MiB whatever the size, serve at most 128 MiB. Uses
# DATABASE_URL (default the local Postgres) and creates, then drops, ks_memory_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
SECRETS=${1:-100000}
DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_URL="${DATABASE_URL%/*}/ks_memory_bench"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

cargo build --release --quiet
BIN=$PWD/target/release/kuma-secrets
WORK=$(mktemp -d)
SERVE_PID=
cleanup() {
    [[ -n $SERVE_PID ]] && kill "$SERVE_PID" 2>/dev/null || true
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_memory_bench WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
printf 'active: bench-1\nkeys:\n  bench-1: %s\n' "$(head -c32 /dev/urandom | base64)" >"$WORK/keys.yaml"
chmod 600 "$WORK/keys.yaml"
psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_memory_bench WITH (FORCE)" -c "CREATE DATABASE ks_memory_bench" >/dev/null

python3 benches/secrets_yaml.py "$SECRETS" team=bench >"$WORK/secrets.yaml"
FILE_MB=$(( $(stat -c %s "$WORK/secrets.yaml") / 1048576 ))

peak() { # LABEL COMMAND... -> prints "| LABEL | peak MiB | seconds |"
    local label=$1
    shift
    /usr/bin/time -f "%M %e" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    read -r kib seconds <"$WORK/time"
    echo "| $label | $(( kib / 1024 )) MiB | ${seconds} s |"
}

echo "$SECRETS secrets of 1 KiB (a ${FILE_MB} MB YAML file), sealed, release build"
echo
echo "| run | peak RSS | time |"
echo "|---|---:|---:|"
peak "import into Postgres" "$BIN" import -f "$WORK/secrets.yaml" --store "$PG_URL" --encryption-keys "$WORK/keys.yaml"
peak "import into SQLite" "$BIN" import -f "$WORK/secrets.yaml" --store "sqlite://$WORK/imported.db" --encryption-keys "$WORK/keys.yaml"
peak "export from Postgres" "$BIN" export --store "$PG_URL" --encryption-keys "$WORK/keys.yaml" -o "$WORK/export.yaml"
peak "copy Postgres to SQLite" "$BIN" copy --from "$PG_URL" --to "sqlite://$WORK/copied.db" \
    --from-encryption-keys "$WORK/keys.yaml" --encryption-keys "$WORK/keys.yaml"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KUMA_SECRETS_LOG=warn "$BIN" serve --store "$PG_URL" --encryption-keys "$WORK/keys.yaml" \
    --api-addr "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -sf -o /dev/null "$BASE/readyz" && break; sleep 0.1; done
python3 - "$BASE" <<'PY'
import json, sys, urllib.request
url, seen = f"{sys.argv[1]}/meshes/default/secrets?size=100", 0
while url:
    body = json.load(urllib.request.urlopen(url))
    seen += len(body["items"])
    url = body["next"]
print(f"walked {seen} secrets", file=sys.stderr)
PY
cat >"$WORK/get.lua" <<LUA
math.randomseed(os.time())
function request()
  return wrk.format('GET', '/meshes/default/secrets/s-' .. math.random(0, $SECRETS - 1))
end
LUA
cat >"$WORK/put.lua" <<LUA
value = string.rep('eHh4', 342)
function request()
  local name = 's-' .. math.random(0, $SECRETS - 1)
  return wrk.format('PUT', '/meshes/default/secrets/' .. name, { ['Content-Type'] = 'application/json' },
    '{"type":"Secret","mesh":"default","name":"' .. name .. '","data":"' .. value .. '"}')
end
LUA
wrk -t2 -c32 -d10s -s "$WORK/get.lua" "$BASE" >/dev/null
wrk -t2 -c32 -d10s -s "$WORK/put.lua" "$BASE" >/dev/null
wrk -t2 -c32 -d10s -s "$WORK/get.lua" "$BASE" >/dev/null
HWM=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$SERVE_PID/status")
RSS=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$SERVE_PID/status")
echo "| serve after walking every page, GET, PUT, GET (10 s each, wrk -c32) | $HWM MiB (now $RSS MiB) | |"
