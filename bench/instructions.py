#!/usr/bin/env python3
"""Instructions per request, per endpoint, counted by callgrind (valgrind).

    python3 bench/instructions.py [N]      # N requests per endpoint (default 2000)
    python3 bench/instructions.py N --postgres postgres://postgres@127.0.0.1:5432
        # the same on a PostgreSQL node as configured by default (a scratch database is made and dropped)
    python3 bench/instructions.py N --metrics
        # the same with metrics on (`--metrics-token`), and one scrape of /metrics before counting
    python3 bench/instructions.py N --provider [--bin PATH]
        # also the provider API: `GET /provider/v1/orgs/{id}` with the bearer token (the
        # token's principal, the wrong-token throttle, the org scoping); --bin: another build
    python3 bench/instructions.py N --callers 5
        # callgrind's --separate-callers=5: each function's cost split by its last 5 callers
        # (which allocation takes which path, BENCHMARKS.md §22)

Counts instructions, not seconds: the figures repeat for the same binary whatever else the
machine is doing, so they show what a change to the hot path saved while the throughput
figures of bench/run.sh are noisy. User space only (the kernel's TCP is not counted).

Starts `target/release/keygate demo` under callgrind with instrumentation off, logs in
through the cloud API, lifts the demo org's rate limits, warms each endpoint up, then for each
endpoint: zero the counters, instrument N keep-alive requests, dump, read the total.
"""

import base64
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its HTTP client and the key obfuscation)

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PG = sys.argv[sys.argv.index("--postgres") + 1].rstrip("/") if "--postgres" in sys.argv else None
PORT = 18_000 + os.getpid() % 1000
METRICS_TOKEN = "instructions-metrics-token" if "--metrics" in sys.argv else None
PROVIDER = "--provider" in sys.argv
CALLGRIND_ARGS = ["--instr-atstart=no"] + (
    [f"--separate-callers={int(sys.argv[sys.argv.index('--callers') + 1])}"] if "--callers" in sys.argv else [])
BINARY = (sys.argv[sys.argv.index("--bin") + 1] if "--bin" in sys.argv
          else os.path.join(bench.REPO, "target", "release", "keygate"))


def wait_for(proc, pattern):
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("keygate demo ended:\n" + "".join(lines))
        lines.append(line)
        m = re.search(pattern, "".join(lines))
        if m:
            return m, "".join(lines)


def start_demo(out):
    """`keygate demo` (embedded store): it prints its org's credentials."""
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", *CALLGRIND_ARGS, f"--callgrind-out-file={out}",
         BINARY, "demo", "--listen", f"127.0.0.1:{PORT}",
         *(["--metrics-token", METRICS_TOKEN] if METRICS_TOKEN else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, text = wait_for(proc, r"provider token:\s+(\S+)")
    field = lambda name: re.search(name + r":\s+(\S+)", text).group(1)  # noqa: E731
    base = f"http://127.0.0.1:{PORT}"
    http = bench.Http(base)
    auth = {"Authorization": f"Bearer {field('provider token')}"}
    _, orgs = http.json("GET", "/provider/v1/orgs", headers=auth)
    org_id = orgs["items"][0]["id"]
    http.json("PUT", f"/provider/v1/orgs/{org_id}/limits", bench.OPEN_LIMITS, auth)
    session = bench.api_login(base, field("admin login"), field("admin password"), field("API key"))
    return proc, session, (f"/provider/v1/orgs/{org_id}", auth)


def start_postgres_node(out, url, data_dir):
    """`keygate serve` on PostgreSQL as configured by default (node cache, global rate limits in
    the database); one org made through the provider API."""
    env = dict(os.environ, KEYGATE_DATABASE_URL=url,
               **({"KEYGATE_METRICS_TOKEN": METRICS_TOKEN} if METRICS_TOKEN else {}),
               KEYGATE_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
               KEYGATE_PROVIDER_TOKEN=bench.PROVIDER_TOKEN)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", *CALLGRIND_ARGS, f"--callgrind-out-file={out}",
         BINARY, "serve", "--listen", f"127.0.0.1:{PORT}",
         "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for(proc, r"keygate listening on")
    base = f"http://127.0.0.1:{PORT}"
    http = bench.Http(base)
    auth = {"Authorization": f"Bearer {bench.PROVIDER_TOKEN}"}
    login = "instr@bench.example"
    _, org = http.json("POST", "/provider/v1/orgs", {
        "name": "Instructions org", "subscription": {"enabled": True, "expiresAt": None},
        "admins": [{"loginName": login, "password": bench.PASSWORD, "role": "FULL"}]}, auth, expect=(201,))
    http.json("PUT", f"/provider/v1/orgs/{org['id']}/limits", bench.OPEN_LIMITS, auth)
    console = bench.Http(base)
    h, body = console.json("POST", "/admin/v1/login", {"loginName": login, "password": bench.PASSWORD})
    hh = {"Cookie": f"keygate_console={bench.cookie(h, 'keygate_console')}", "X-CSRF-Token": body["csrfToken"]}
    _, k = console.json("POST", "/admin/v1/apiKey/reveal", None, hh)
    key = k["keyValue"] if "keyValue" in k else k["key"]["keyValue"]
    # The node uses its cache once it holds a lease (renewed every quarter lease).
    time.sleep(3)
    return proc, bench.api_login(base, login, bench.PASSWORD, key), (f"/provider/v1/orgs/{org['id']}", auth)


def main():
    out_dir = tempfile.mkdtemp(prefix="kg-callgrind-")
    out = os.path.join(out_dir, "callgrind.out")
    db = f"kg_instr_{os.getpid()}"
    if PG:
        subprocess.run(["psql", PG + "/postgres", "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        proc, session, provider = start_postgres_node(out, f"{PG}/{db}", os.path.join(out_dir, "data"))
    else:
        proc, session, provider = start_demo(out)
    try:
        base = f"http://127.0.0.1:{PORT}"
        http = bench.Http(base)
        headers = {"Cookie": f"JSESSIONID={session}", "X-Original-Method": "GET"}
        def control(*args):
            r = subprocess.run(["callgrind_control", *args, str(proc.pid)], capture_output=True, text=True)
            if r.returncode != 0 or "OK" not in r.stdout:
                raise RuntimeError(f"callgrind_control {args}: {r.stdout} {r.stderr}")

        endpoints = ["/healthz", "/authz", "/api/v1/apiKeys"]
        endpoints += [provider[0]] if PROVIDER else []
        # The provider API takes the bearer token instead of the session.
        headers_of = lambda path: provider[1] if path.startswith("/provider/") else headers  # noqa: E731
        for path in endpoints:
            for _ in range(200):
                status, _, _ = http.req("GET", path, headers=headers_of(path))
                assert status < 300, (path, status)
        if METRICS_TOKEN:
            status, _, _ = http.req("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert status == 200, status
        results = {}
        for path in endpoints:
            control("-z")
            control("-i", "on")
            for _ in range(N):
                status, _, _ = http.req("GET", path, headers=headers_of(path))
                assert status < 300, (path, status)
            control("-i", "off")
            before = set(glob.glob(out + "*"))
            control("-d", path.strip("/").replace("/", "_"))
            time.sleep(0.5)
            dumped = sorted(set(glob.glob(out + "*")) - before, key=os.path.getmtime)
            total = 0
            for f in dumped:
                for line in open(f):
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
            results[path] = total / N
            print(f"{path:<20} {total / N:>10,.0f} instructions/request   ({os.path.basename(dumped[-1]) if dumped else '?'})",
                  flush=True)
        print(f"/authz - /healthz:  {results['/authz'] - results['/healthz']:>10,.0f}")
        print(f"apiKeys - /healthz: {results['/api/v1/apiKeys'] - results['/healthz']:>10,.0f}")
        if PROVIDER:
            print(f"provider - /healthz: {results[provider[0]] - results['/healthz']:>9,.0f}")
        print(f"callgrind files: {out_dir} (callgrind_annotate FILE)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if PG:
            subprocess.run(["psql", PG + "/postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                           capture_output=True)


if __name__ == "__main__":
    main()
