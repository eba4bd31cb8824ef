#!/usr/bin/env python3
"""Shared-store traffic of the global rate limits under load (issue 14).

    python3 bench/claims.py [PATH] [RUNS]     # default /api/v1/apiKeys, 3 runs

Starts one PostgreSQL deployment as bench.py's scenario 7 does (BENCH_PG_NODES nodes, default
2, as configured by default, BENCH_SESSIONS orgs with limits lifted), loads PATH on every node
with wrk for BENCH_DURATION seconds per run, and prints per run: the requests per second, the
rate-limit claims per second (`keygate_rate_limit_claims_total`, all nodes) and the
transactions per second the deployment's database committed (`pg_stat_database`).
BENCH_BIN measures another build. Metrics are on (they count the claims).
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("BENCH_METRICS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def committed(db):
    out = bench.subprocess.run(
        ["psql", bench.PG_URL + "/postgres", "-tAc",
         f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"],
        capture_output=True, text=True, check=True).stdout
    return int(out.strip() or 0)


def claims(base):
    _, _, body = bench.Http(base).req(
        "GET", "/metrics", headers={"Authorization": f"Bearer {bench.METRICS_TOKEN}"})
    return sum(float(line.split()[-1]) for line in body.decode().splitlines()
               if line.startswith("keygate_rate_limit_claims_total"))


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/api/v1/apiKeys"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with bench.PgDeployment(tempfile.mkdtemp(prefix="kg-claims-"), "claims", None) as d:
        print(f"{len(d.nodes)} PostgreSQL nodes, {len(d.ids)} orgs, {path}, {bench.DURATION} s per run")
        for _ in range(runs):
            x0, c0, t0 = committed(d.db), sum(claims(n.base) for n in d.nodes), time.time()
            r = d.load(path)
            dt = time.time() - t0
            x1, c1 = committed(d.db), sum(claims(n.base) for n in d.nodes)
            print(f"  {r['rps']:,.0f} req/s   {(c1 - c0) / dt:,.0f} claims/s   "
                  f"{(x1 - x0) / dt:,.0f} transactions/s   "
                  f"({(c1 - c0) / dt / (len(d.ids) * len(d.nodes)):.2f} claims per org, node and second)")


if __name__ == "__main__":
    main()
