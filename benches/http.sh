#!/usr/bin/env bash
# HTTP throughput of the release binary against etcd 3.4's v3 JSON gateway (the store
# Kubernetes-mode secrets sit on), on this machine, in alternating rounds:
#
#   GET        one secret by name, 1,000 names
#   PUT        blind create-or-replace of a 1 KiB secret over 1,000 names
#   IF-MATCH   compare-and-swap PUT over 1,000 names (etcd: a txn comparing the version)
#
# on kuma-secrets with Postgres and with SQLite (both sealed, read cache on), GET on the
# ceiling of our own HTTP stack (benches/http_ceiling.rs: bare axum, a constant body of a
# Secret's size), and pgbench
# running our upsert statement over the same 1,000 names at the same concurrency (the
# bound for blind PUT: what Postgres itself does with the same statement).
#
#   bash benches/http.sh [SECONDS_PER_RUN] [ROUNDS]      # defaults: 10 s, 2 rounds
#   KUMA_SECRETS_BIN=/path/to/kuma-secrets bash benches/http.sh …   # another build
#   BASELINE_BIN=/path/to/old/kuma-secrets bash benches/http.sh …    # and an earlier one
#
# With BASELINE_BIN, that build serves too (on a database and a file of its own) and runs
# every operation in the same rounds, alternated with this one: a change's effect, side
# by side, on a machine whose speed drifts between runs. Rounds alternate the order of the
# targets too; use an even number of them.
#
# Installs wrk and etcd-server from Debian if missing. Uses DATABASE_URL (default the local
# Postgres) and creates, then drops, the database ks_http_bench on it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS=${1:-10}
ROUNDS=${2:-2}
CONNECTIONS=32
THREADS=2
DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_BENCH_URL="${DATABASE_URL%/*}/ks_http_bench"

install() {
    command -v "$1" >/dev/null && return
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
install wrk wrk
install etcd etcd-server
install pgbench postgresql-client

# KUMA_SECRETS_BIN runs another build (an earlier commit's, to compare) in place of this one.
if [ -n "${KUMA_SECRETS_BIN:-}" ]; then
    BIN=$KUMA_SECRETS_BIN
else
    cargo build --release --quiet
    BIN=$PWD/target/release/kuma-secrets
fi
# The ceiling of our HTTP stack for a cached GET: the same axum/hyper/tokio answering a
# constant Secret-sized body (benches/http_ceiling.rs).
CEILING_BIN=$(cargo bench --bench http_ceiling --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "http_ceiling" and m.get("executable"):
        print(m["executable"])')
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_http_bench WITH (FORCE)" >/dev/null 2>&1 || true
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_http_bench_base WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
BASELINE_BIN=${BASELINE_BIN:-}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # URL
    for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return; sleep 0.1; done
    echo "nothing answers at $1" >&2; exit 1
}

# ---- etcd, one member, fsync on every commit (its default) ----------------------------
ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
ETCD=http://127.0.0.1:$ETCD_PORT
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_http "$ETCD/health"

# ---- kuma-secrets on Postgres and on SQLite, both sealed ---------------------------------
printf 'active: bench-1\nkeys:\n  bench-1: %s\n' "$(head -c32 /dev/urandom | base64)" >"$WORK/keys.yaml"
chmod 600 "$WORK/keys.yaml"
psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_http_bench WITH (FORCE)" -c "CREATE DATABASE ks_http_bench" >/dev/null
"$BIN" migrate up --store "$PG_BENCH_URL" >/dev/null
PG_PORT=$(free_port)
SQLITE_PORT=$(free_port)
# One build serving on Postgres (sealed) and on SQLite: the same flags for every build run.
serve_both() { # BIN PG_URL SQLITE_FILE PG_PORT SQLITE_PORT LOG_PREFIX
    KUMA_SECRETS_LOG=warn "$1" serve --store "$2" --encryption-keys "$WORK/keys.yaml" \
        --api-addr "127.0.0.1:$4" >"$WORK/$6pg.log" 2>&1 &
    PIDS+=($!)
    KUMA_SECRETS_LOG=warn "$1" serve --store "sqlite://$3" \
        --api-addr "127.0.0.1:$5" >"$WORK/$6sqlite.log" 2>&1 &
    PIDS+=($!)
}
serve_both "$BIN" "$PG_BENCH_URL" "$WORK/bench.db" "$PG_PORT" "$SQLITE_PORT" ""
OURS_PG=http://127.0.0.1:$PG_PORT
OURS_SQLITE=http://127.0.0.1:$SQLITE_PORT
TARGETS=(pg etcd sqlite)
if [[ -n $BASELINE_BIN ]]; then
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS ks_http_bench_base WITH (FORCE)" -c "CREATE DATABASE ks_http_bench_base" >/dev/null
    "$BASELINE_BIN" migrate up --store "${DATABASE_URL%/*}/ks_http_bench_base" >/dev/null
    BASE_PG_PORT=$(free_port)
    BASE_SQLITE_PORT=$(free_port)
    serve_both "$BASELINE_BIN" "${DATABASE_URL%/*}/ks_http_bench_base" "$WORK/base.db" \
        "$BASE_PG_PORT" "$BASE_SQLITE_PORT" base-
    BASE_PG=http://127.0.0.1:$BASE_PG_PORT
    BASE_SQLITE=http://127.0.0.1:$BASE_SQLITE_PORT
    wait_http "$BASE_PG/readyz"
    wait_http "$BASE_SQLITE/readyz"
    TARGETS=(pg base-pg etcd sqlite base-sqlite)
fi
CEILING_PORT=$(free_port)
"$CEILING_BIN" "127.0.0.1:$CEILING_PORT" --value-bytes 1024 >"$WORK/ceiling.log" 2>&1 &
PIDS+=($!)
CEILING=http://127.0.0.1:$CEILING_PORT
wait_http "$OURS_PG/readyz"
wait_http "$OURS_SQLITE/readyz"
wait_http "$CEILING/meshes/default/secrets/s-0"

# ---- wrk scripts: 1,000 names, 1 KiB values ------------------------------------------------
cat >"$WORK/common.lua" <<'LUA'
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
NAMES = 1000
value = b64(string.rep('x', 1024))
-- Each thread walks its own share of the names in turn, so two of its requests for one
-- name are never in flight together and a compare-and-swap knows the version it expects.
thread_index = 0
function setup(thread)
  thread:set('id', thread_index)
  thread_index = thread_index + 1
  threads = threads or {}
  table.insert(threads, thread)
end
function init(args)
  step = 0
  failed = 0
  codes = {}
  first = true
  versions = {}
  local file = io.open(os.getenv('WRK_DIR') .. '/versions.txt')
  if file then
    local n = 0
    for line in file:lines() do versions[n] = tonumber(line); n = n + 1 end
    file:close()
  end
end
function next_name()
  local threads_n = tonumber(os.getenv('WRK_THREADS') or '2')
  local n = (step * threads_n + id) % NAMES
  step = step + 1
  return n
end
-- The next name of a compare-and-swap walk and the version it expects, or nil for the
-- one request wrk asks each thread for and never sends: answered without moving on, or
-- the name it named would be one version ahead of the server for the whole run.
function next_swap()
  if first then
    first = false
    return nil
  end
  local n = next_name()
  local expected = versions[n]
  versions[n] = expected + 1
  return n, expected
end
-- A request that did not do what it asked, counted by its status (0: not an HTTP error,
-- e.g. etcd's 200 with "succeeded":false).
function fail(status)
  failed = failed + 1
  codes[status] = (codes[status] or 0) + 1
end
function done(summary, latency, requests)
  local total, by_status = 0, {}
  for _, t in ipairs(threads) do
    total = total + t:get('failed')
    for status, n in pairs(t:get('codes')) do by_status[status] = (by_status[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(by_status) do table.insert(parts, string.format('%s: %d', status, n)) end
  table.sort(parts)
  io.write(string.format('FAILED %d %s\n', total, table.concat(parts, ', ')))
end
LUA

# kuma-secrets
cat >"$WORK/ours-get.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  return wrk.format('GET', '/meshes/default/secrets/s-' .. next_name())
end
function response(status) if status ~= 200 then fail(status) end end
LUA
cat >"$WORK/ours-put.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  local name = 's-' .. next_name()
  return wrk.format('PUT', '/meshes/default/secrets/' .. name, { ['Content-Type'] = 'application/json' },
    '{"type":"Secret","mesh":"default","name":"' .. name .. '","data":"' .. value .. '"}')
end
function response(status) if status ~= 200 and status ~= 201 then fail(status) end end
LUA
cat >"$WORK/ours-ifmatch.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  local n, expected = next_swap()
  if not n then return wrk.format('GET', '/readyz') end
  local name = 's-' .. n
  return wrk.format('PUT', '/meshes/default/secrets/' .. name,
    { ['Content-Type'] = 'application/json', ['If-Match'] = '"' .. expected .. '"' },
    '{"type":"Secret","mesh":"default","name":"' .. name .. '","data":"' .. value .. '"}')
end
function response(status) if status ~= 200 then fail(status) end end
LUA

# etcd: keys /registry/secrets/default/s-N, as Kubernetes lays them out
cat >"$WORK/etcd-get.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  return wrk.format('POST', '/v3/kv/range', nil,
    '{"key":"' .. b64('/registry/secrets/default/s-' .. next_name()) .. '"}')
end
function response(status, headers, body)
  if status ~= 200 then fail(status) elseif not body:find('"kvs"') then fail(0) end
end
LUA
cat >"$WORK/etcd-put.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  return wrk.format('POST', '/v3/kv/put', nil,
    '{"key":"' .. b64('/registry/secrets/default/s-' .. next_name()) .. '","value":"' .. value .. '"}')
end
function response(status) if status ~= 200 then fail(status) end end
LUA
cat >"$WORK/etcd-ifmatch.lua" <<'LUA'
dofile(os.getenv('WRK_DIR') .. '/common.lua')
function request()
  local n, expected = next_swap()
  if not n then return wrk.format('GET', '/health') end
  local key = b64('/registry/secrets/default/s-' .. n)
  return wrk.format('POST', '/v3/kv/txn', nil,
    '{"compare":[{"key":"' .. key .. '","result":"EQUAL","target":"VERSION","version":"' .. expected ..
    '"}],"success":[{"requestPut":{"key":"' .. key .. '","value":"' .. value .. '"}}]}')
end
function response(status, headers, body)
  -- (The `/health` request above, when wrk does send it, is no failed swap.)
  if status ~= 200 then fail(status)
  elseif not body:find('"succeeded":true') and not body:find('"health"') then fail(0) end
end
LUA

# ---- seed 1,000 names everywhere -----------------------------------------------------------
seed() { # BASE_URL KIND(ours|etcd) -> leaves every name at version 1
    python3 - "$1" "$2" <<'PY'
import base64, json, sys, urllib.request
base, kind = sys.argv[1], sys.argv[2]
value = base64.b64encode(b"x" * 1024).decode()
for n in range(1000):
    name = f"s-{n}"
    if kind == "ours":
        body = {"type": "Secret", "mesh": "default", "name": name, "data": value}
        req = urllib.request.Request(f"{base}/meshes/default/secrets/{name}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, method="PUT")
    else:
        key = base64.b64encode(f"/registry/secrets/default/{name}".encode()).decode()
        req = urllib.request.Request(f"{base}/v3/kv/put", json.dumps({"key": key, "value": value}).encode(), method="POST")
    urllib.request.urlopen(req).read()
PY
}
seed "$OURS_PG" ours
seed "$OURS_SQLITE" ours
seed "$ETCD" etcd
if [[ -n $BASELINE_BIN ]]; then
    seed "$BASE_PG" ours
    seed "$BASE_SQLITE" ours
fi

base_of() {
    case $1 in
        pg) echo "$OURS_PG" ;; sqlite) echo "$OURS_SQLITE" ;; etcd) echo "$ETCD" ;; ceiling) echo "$CEILING" ;;
        base-pg) echo "$BASE_PG" ;; base-sqlite) echo "$BASE_SQLITE" ;;
    esac
}
script_of() { case $1 in etcd) echo etcd ;; *) echo ours ;; esac; }

# Writes the version each name is at now, one line per name (s-0 first), for the
# compare-and-swap scripts to start from.
current_versions() { # TARGET
    python3 - "$(base_of "$1")" "$(script_of "$1")" >"$WORK/versions.txt" <<'PY'
import base64, json, sys, urllib.request
base, kind = sys.argv[1], sys.argv[2]
for n in range(1000):
    if kind == "ours":
        req = urllib.request.Request(f"{base}/meshes/default/secrets/s-{n}", headers={"Cache-Control": "no-cache"})
        print(int(urllib.request.urlopen(req).headers["ETag"].strip('"')))
    else:
        key = base64.b64encode(f"/registry/secrets/default/s-{n}".encode()).decode()
        req = urllib.request.Request(f"{base}/v3/kv/range", json.dumps({"key": key}).encode())
        print(int(json.loads(urllib.request.urlopen(req).read())["kvs"][0]["version"]))
PY
}

run() { # TARGET OP -> successful requests per second
    local target=$1 op=$2
    if [[ $op == ifmatch ]]; then current_versions "$target"; fi
    local out
    out=$(WRK_DIR=$WORK WRK_THREADS=$THREADS \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${RUN_SECONDS}s" --timeout 10s --latency -s "$WORK/$(script_of "$target")-$op.lua" "$(base_of "$target")")
    # wrk's 99th percentile of latency, in ms, kept beside the round's rate.
    awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; print v}' <<<"$out" >>"$WORK/p99.$target.$op"
    local rps failed statuses duration requests
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    duration=$(awk '/requests in/ {gsub(/s,/, "", $4); print $4}' <<<"$out")
    failed=$(awk '/^FAILED/ {print $2}' <<<"$out")
    statuses=$(awk '/^FAILED/ {$1 = ""; $2 = ""; sub(/^ +/, ""); print}' <<<"$out")
    python3 -c "print(round(($requests - $failed) / $duration))"
    if [[ $failed -gt 0 ]]; then echo "  ($target $op: $failed of $requests failed; by status: $statuses)" >&2; fi
}

pgbench_upsert() { # -> tps of our blind-upsert statement over 1,000 names of its own
    # (p-0 … p-999: what it stores is not sealed, so it must not overwrite the API's rows)
    cat >"$WORK/upsert.sql" <<'SQL'
\set n random(0, 999)
INSERT INTO secrets (mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id, actor, request_id) VALUES ('default', 'p-' || :n, 1, now(), now(), '{"kuma.io/mesh": "default"}', convert_to(repeat(md5(random()::text), 32), 'SQL_ASCII'), 'bench-1', decode(md5(random()::text), 'hex'), '{"name": "localhost", "groups": []}', 'bench') ON CONFLICT (mesh, name) DO UPDATE SET data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id, labels = excluded.labels, modification_time = excluded.modification_time, version = secrets.version + 1, actor = excluded.actor, request_id = excluded.request_id RETURNING mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id;
SQL
    pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$RUN_SECONDS" -f "$WORK/upsert.sql" "$PG_BENCH_URL" 2>/dev/null |
        awk '/^tps/ {printf "%d\n", $3}'
}

pgbench_multirow() { # -> rows/s of a 16-row upsert of the same statement, rows in key order
    # (the bound for group commit: one statement and one commit for many writes)
    cat >"$WORK/multirow.sql" <<'SQL'
\set n random(0, 999)
INSERT INTO secrets (mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id, actor, request_id) SELECT 'default', 'p-' || ((:n + i * 61) % 1000), 1, now(), now(), '{"kuma.io/mesh": "default"}', convert_to(repeat(md5(random()::text), 32), 'SQL_ASCII'), 'bench-1', decode(md5(random()::text), 'hex'), '{"name": "localhost", "groups": []}', 'bench' FROM generate_series(0, 15) AS i ORDER BY 2 ON CONFLICT (mesh, name) DO UPDATE SET data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id, labels = excluded.labels, modification_time = excluded.modification_time, version = secrets.version + 1, actor = excluded.actor, request_id = excluded.request_id RETURNING mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id;
SQL
    pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$RUN_SECONDS" -f "$WORK/multirow.sql" "$PG_BENCH_URL" 2>/dev/null |
        awk '/^tps/ {printf "%d\n", $3 * 16}'
}

declare -A SUM
for round in $(seq "$ROUNDS"); do
    for op in get put ifmatch; do
        # Every other round in the reverse order: the target that runs right after another
        # on the same Postgres measured 5 to 10 % faster (two builds, each run first then second).
        order=("${TARGETS[@]}")
        if (( round % 2 == 0 )); then
            order=()
            for (( i = ${#TARGETS[@]} - 1; i >= 0; i-- )); do order+=("${TARGETS[$i]}"); done
        fi
        for target in "${order[@]}"; do
            value=$(run "$target" "$op")
            SUM[$target.$op]=$(( ${SUM[$target.$op]:-0} + value ))
            echo "round $round: $op on $target: $value/s" >&2
        done
    done
    value=$(run ceiling get)
    SUM[ceiling.get]=$(( ${SUM[ceiling.get]:-0} + value ))
    echo "round $round: get on the bare-axum ceiling: $value/s" >&2
    value=$(pgbench_upsert)
    SUM[pgbench.put]=$(( ${SUM[pgbench.put]:-0} + value ))
    echo "round $round: pgbench upsert: $value tps" >&2
    value=$(pgbench_multirow)
    SUM[pgbench.multirow]=$(( ${SUM[pgbench.multirow]:-0} + value ))
    echo "round $round: pgbench 16-row upsert: $value rows/s" >&2
done

avg() { echo $(( ${SUM[$1]} / ROUNDS )); }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo
echo "wrk -t$THREADS -c$CONNECTIONS, ${RUN_SECONDS}s per run, $ROUNDS alternating rounds, 1 KiB secrets over 1,000 names; successful requests/s"
echo
p99() { # TARGET OP -> the highest p99 of the rounds, in ms
    sort -g "$WORK/p99.$1.$2" | tail -1
}
echo "| operation | kuma-secrets Postgres | kuma-secrets SQLite | etcd 3.4 | Postgres / etcd | SQLite / etcd | p99 ms (Postgres / SQLite / etcd) | pgbench upsert | Postgres / pgbench |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for op in get put ifmatch; do
    pg=$(avg pg.$op); sq=$(avg sqlite.$op); et=$(avg etcd.$op)
    case $op in get) label="GET one secret" ;; put) label="blind PUT" ;; ifmatch) label="If-Match PUT" ;; esac
    if [[ $op == get ]]; then pgb="" ; pgr=""; else pgb=$(avg pgbench.put); pgr=$(ratio "$pg" "$pgb"); fi
    echo "| $label | $pg | $sq | $et | $(ratio "$pg" "$et") | $(ratio "$sq" "$et") | $(p99 pg $op) / $(p99 sqlite $op) / $(p99 etcd $op) | $pgb | $pgr |"
done
if [[ -n $BASELINE_BIN ]]; then
    echo
    echo "The same rounds on the baseline build ($BASELINE_BIN), alternated with the runs above:"
    echo
    echo "| operation | this build, Postgres | baseline, Postgres | this / baseline | this build, SQLite | baseline, SQLite | this / baseline | p99 ms (this / baseline; Postgres, SQLite) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for op in get put ifmatch; do
        pg=$(avg pg.$op); bpg=$(avg base-pg.$op); sq=$(avg sqlite.$op); bsq=$(avg base-sqlite.$op)
        case $op in get) label="GET one secret" ;; put) label="blind PUT" ;; ifmatch) label="If-Match PUT" ;; esac
        echo "| $label | $pg | $bpg | $(ratio "$pg" "$bpg") | $sq | $bsq | $(ratio "$sq" "$bsq") | $(p99 pg $op) / $(p99 base-pg $op); $(p99 sqlite $op) / $(p99 base-sqlite $op) |"
    done
fi
echo
echo "Postgres ceilings under pgbench, same table and triggers, $CONNECTIONS clients: one upsert per commit $(avg pgbench.put) tps;"
echo "a 16-row upsert per commit (what batching can reach) $(avg pgbench.multirow) rows/s"
ceiling=$(avg ceiling.get)
echo
echo "GET against the ceiling of our HTTP stack (bare axum, constant body of the same size): $ceiling/s;"
echo "Postgres $(ratio "$(avg pg.get)" "$ceiling")x, SQLite $(ratio "$(avg sqlite.get)" "$ceiling")x of it"
