#!/usr/bin/env python3
"""Two builds side by side, loaded in the same seconds: which one serves a request for less CPU.

    python3 bench/ab.py BUILD_A BUILD_B [ROUNDS]     # default 8 rounds per placement

Starts one PostgreSQL deployment of each build as bench.py's scenario 7 does (BENCH_PG_NODES
nodes each, default 2, as configured by default, BENCH_SESSIONS orgs with limits lifted,
metrics on unless BENCH_METRICS=0). Each round loads the same route on every node of both
deployments at once (`wrk_group`, BENCH_DURATION seconds), so a slow stretch of a shared VM
slows both alike; then the deployments are started again with the builds swapped, so neither
build keeps the better placement. Prints, per route, A's requests per server CPU-second over
B's: the median and range over all rounds. Unlike bench.py's ratios to `/healthz`, this
compares builds, not routes: a change that makes every route cheaper shows here and not there.
"""

import os
import statistics
import sys
import tempfile

os.environ.setdefault("BENCH_METRICS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROUTES = ["/api/v1/apiKeys", "/healthz", "/authz"]


def per_cpu(group):
    return sum(r["requests"] for r in group) / max(sum(r["server_cpu_s"] for r in group), 1e-9)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    builds = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    workdir = tempfile.mkdtemp(prefix="keygate-ab-")
    ratios = {p: [] for p in ROUTES}
    for placement in (builds, builds[::-1]):
        bench.BIN = placement[0]
        with bench.PgDeployment(workdir, "ab-first", None) as first:
            bench.BIN = placement[1]
            with bench.PgDeployment(workdir, "ab-second", None) as second:
                sides = [[(n.base, dep.hdrs) for n in dep.nodes] for dep in (first, second)]
                for base, hdrs in sides[0] + sides[1]:
                    for p in ROUTES:
                        bench.wrk(base, p, hdrs, duration=1, quiet_checked=True)
                for _ in range(rounds):
                    for p in ROUTES:
                        res = bench.wrk_group([(b, p, h) for b, h in sides[0] + sides[1]])
                        k = len(sides[0])
                        f, s = per_cpu(res[:k]), per_cpu(res[k:])
                        ratios[p].append(f / s if placement is builds else s / f)
    a, b = (os.path.basename(x) for x in builds)
    for p, v in ratios.items():
        bench.log(f"{p:<17} {a} / {b}, requests per server CPU-second, median of {len(v)} rounds "
                  f"{statistics.median(v):.3f} (range {min(v):.3f}-{max(v):.3f})")


if __name__ == "__main__":
    main()
