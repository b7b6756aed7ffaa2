#!/usr/bin/env python3
"""Multi-zone sync, measured: a global store and three zones (SQLite, Postgres, SQLite) on
loopback, real `serve` processes of the release build.

1. The global store starts with SECRETS secrets in 20 Meshes (imported); the time until all
   three zones hold a full copy (each `/readyz` 200) is the first sync.
2. A steady write load on the global store (RATE writes/s for SECONDS, each a new secret:
   a zone that finds several changes of one secret waiting applies its latest state once,
   so only creates are matched one to one); for each write, the time from the global store's answer to the
   change's event in each zone's own change feed (the zone has committed it), read by a
   long poll on every zone. Reported: p50, p99 and max per zone, and how many arrived.

    python3 benches/zone_sync.py BIN [SECRETS] [RATE] [SECONDS]

BIN is the kuma-secrets binary; DATABASE_URL (default the local Postgres) gets a database
ks_zone_bench, dropped at the end.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.path.abspath(sys.argv[1])
SECRETS = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 200
SECONDS = int(sys.argv[4]) if len(sys.argv) > 4 else 20
MESHES = 20
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
PG_URL = DATABASE_URL.rsplit("/", 1)[0] + "/ks_zone_bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql):
    subprocess.run(["psql", "-q", DATABASE_URL, "-c", sql], check=True, capture_output=True)


def request(method, url, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.status, response.read()


def ready(base):
    try:
        return request("GET", base + "/readyz", timeout=2)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def serve(work, args, name):
    port = free_port()
    log = open(os.path.join(work, name + ".log"), "w")
    process = subprocess.Popen([BIN, "serve", "--api-addr", f"127.0.0.1:{port}"] + args,
                               cwd=work, stderr=log, env=dict(os.environ, KUMA_SECRETS_LOG=os.environ.get("KUMA_SECRETS_LOG", "warn")))
    return process, f"http://127.0.0.1:{port}"


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main():
    work = tempfile.mkdtemp(prefix="ks-zone-bench-")
    processes = []
    try:
        psql("DROP DATABASE IF EXISTS ks_zone_bench WITH (FORCE)")
        psql("CREATE DATABASE ks_zone_bench")
        subprocess.run([BIN, "migrate", "up", "--store", PG_URL], check=True, capture_output=True)
        keys = os.path.join(work, "pg.keys")
        subprocess.run([BIN, "generate", "encryption-key", "--keyring", keys], check=True, capture_output=True)
        with open(os.path.join(work, "global.yaml"), "w") as out:
            for m in range(MESHES):
                out.write(f"---\ntype: Mesh\nname: mesh-{m}\n")
            for n in range(SECRETS):
                value = base64.b64encode(f"value {n}".encode()).decode()
                out.write(f"---\ntype: Secret\nmesh: mesh-{n % MESHES}\nname: secret-{n}\ndata: {value}\n")
        global_store = "sqlite://" + os.path.join(work, "global.db")
        subprocess.run([BIN, "import", "-f", os.path.join(work, "global.yaml"), "--store", global_store],
                       check=True, capture_output=True)
        process, global_base = serve(work, ["--mode", "global", "--store", global_store], "global")
        processes.append(process)
        while not ready(global_base):
            time.sleep(0.05)

        zones = []
        started = time.monotonic()
        for n, store in enumerate([None, PG_URL, None]):
            # Each zone presents a zone token of its own, as in production.
            token_file = os.path.join(work, f"zone-{n}.token")
            token = subprocess.run([BIN, "generate", "zone-token", "--zone", f"zone-{n}", "--valid-for", "1h",
                                    "--api-url", global_base], check=True, capture_output=True, text=True).stdout
            with open(token_file, "w") as out:
                out.write(token.strip())
            args = ["--zone", f"zone-{n}", "--global-url", global_base, "--global-token-file", token_file]
            if store is None:
                args += ["--store", "sqlite://" + os.path.join(work, f"zone-{n}.db")]
            else:
                args += ["--store", store, "--encryption-keys", keys]
            process, base = serve(work, args, f"zone-{n}")
            processes.append(process)
            zones.append(base)
        first = {}
        deadline = time.monotonic() + 300
        while len(first) < len(zones):
            if time.monotonic() > deadline:
                raise SystemExit(f"zones not ready after 300 s: logs in {work}")
            for base in zones:
                if base not in first and ready(base):
                    first[base] = time.monotonic() - started
            time.sleep(0.05)
        print(f"{SECRETS} secrets in {MESHES} Meshes, 3 zones (SQLite, Postgres, SQLite); release build")
        print()
        print("first sync (all zones listing at once): " + ", ".join(f"zone-{i} {first[b]:.1f} s" for i, b in enumerate(zones)))

        # Each zone's feed, followed from now.
        arrivals = {base: {} for base in zones}
        seen = {base: 0 for base in zones}
        stop = threading.Event()
        following = {base: threading.Event() for base in zones}

        def follow(base):
            _, body = request("GET", base + "/_changes?after=0&limit=1")
            after = json.loads(body)["revision"]
            # From the head: ask for what comes after the newest event.
            status, body = request("GET", base + f"/_changes?after={after}&limit=1000&wait=1s")
            while True:
                page = json.loads(body)
                if not page["events"]:
                    break
                after = page["revision"]
                status, body = request("GET", base + f"/_changes?after={after}&limit=1000&wait=1s")
            following[base].set()
            while not stop.is_set():
                try:
                    _, body = request("GET", base + f"/_changes?after={after}&limit=1000&wait=2s")
                except (urllib.error.URLError, OSError) as err:
                    print(f"follower of {base}: {err}", file=sys.stderr)
                    time.sleep(0.1)
                    continue
                now = time.monotonic()
                page = json.loads(body)
                seen[base] += len(page["events"])
                for event in page["events"]:
                    if event["name"].startswith("load-") and event["operation"] == "create":
                        arrivals[base].setdefault(event["name"], now)
                after = page["revision"]

        followers = [threading.Thread(target=follow, args=(base,), daemon=True) for base in zones]
        for follower in followers:
            follower.start()
        for base in zones:
            following[base].wait()

        written = {}
        interval = 1.0 / RATE
        begin = time.monotonic()
        for i in range(RATE * SECONDS):
            due = begin + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name = f"load-{i}"
            body = {"type": "Secret", "mesh": "mesh-0", "name": name,
                    "data": base64.b64encode(f"write {i}".encode()).decode()}
            request("PUT", f"{global_base}/meshes/mesh-0/secrets/{name}", body)
            written[name] = time.monotonic()
        elapsed = time.monotonic() - begin
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                len([k for k in written if k in arrivals[b]]) < len(written) for b in zones):
            time.sleep(0.1)
        stop.set()

        print(f"steady load: {len(written)} writes to the global store in {elapsed:.1f} s ({len(written) / elapsed:.0f}/s)")
        print()
        print("| zone | store | arrived | p50 | p99 | max |")
        print("|---|---|---:|---:|---:|---:|")
        for i, base in enumerate(zones):
            lags = [(arrivals[base][k] - t) * 1000 for k, t in written.items() if k in arrivals[base]]
            kind = "Postgres" if i == 1 else "SQLite"
            print(f"| zone-{i} | {kind} | {len(lags)}/{len(written)} | {percentile(lags, 50):.0f} ms | "
                  f"{percentile(lags, 99):.0f} ms | {max(lags):.0f} ms |")
    finally:
        for process in processes:
            process.kill()
        psql("DROP DATABASE IF EXISTS ks_zone_bench WITH (FORCE)")
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
