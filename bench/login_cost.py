#!/usr/bin/env python3
"""What a login costs: latency of sequential logins on one connection, per outcome.

    python3 bench/login_cost.py [N] [--bin PATH]    # N logins per outcome (default 300)

Starts `keygate demo` (embedded store, durable commits, argon2id at OWASP parameters) from
target/release/keygate (or --bin, e.g. a build of an older commit, to compare), then times N
cloud API logins of each kind, one after another:

  right key        the login every client makes
  wrong password   someone guessing passwords (counted per address and login)
  wrong key        the right password with a wrong key (charged to the key-guessing budget)
  console          POST /admin/v1/login with the right password

and prints p50 / p99 in milliseconds with the answers' status codes (an older build that
throttles per login name answers 429 early, which is cheaper: compare those rows with care). Failures come from many loopback addresses (127.0.4.x),
so the failed-login throttle does not cut the run short; wrong keys at timestamps that read
many key positions (charges of 62^-7 or less) stay far from the budget.
"""

import os
import re
import socket
import subprocess
import sys
import time
import http.client
import json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 300
BIN = sys.argv[sys.argv.index("--bin") + 1] if "--bin" in sys.argv else bench.BIN
PORT = 19_000 + os.getpid() % 1000


class From(http.client.HTTPConnection):
    """A keep-alive connection from a chosen loopback address."""

    def __init__(self, source):
        super().__init__("127.0.0.1", PORT, timeout=60, source_address=(source, 0))

    def post(self, path, body):
        self.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = self.getresponse()
        r.read()
        return r.status


def positions(ts):
    n = ts % 1_000_000
    r = n >> 1
    return len({int(d) for d in f"{n:06d}"} | {int(d) + 2 for d in f"{r:06d}"})


def strong_ts():
    """The current time, moved forward to a millisecond whose residue reads 7+ positions."""
    ts = int(time.time() * 1000)
    while positions(ts) < 7:
        ts += 1
    return ts


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    proc = subprocess.Popen([BIN, "demo", "--listen", f"127.0.0.1:{PORT}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = ""
    while "provider token" not in text:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("keygate demo ended:\n" + text)
        text += line
    field = lambda name: re.search(name + r":\s+(\S+)", text).group(1)  # noqa: E731
    login, password, key = field("admin login"), field("admin password"), field("API key")
    try:
        runs = {}

        def timed(name, source_of, make):
            times, statuses = [], {}
            conns = {}
            for i in range(N):
                src = source_of(i)
                c = conns.setdefault(src, From(src))
                path, body, want = make(i)
                t = time.perf_counter()
                status = c.post(path, body)
                times.append((time.perf_counter() - t) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
            runs[name] = (times, statuses, want)

        def api(k, pw):
            ts = strong_ts()
            return {"apiKey": bench.obfuscate(k, ts), "username": login, "password": pw, "timestamp": ts}

        timed("right key", lambda i: "127.0.0.1", lambda i: ("/api/v1/auth", api(key, password), 200))
        timed("wrong password", lambda i: f"127.0.4.{i // 4 % 250 + 1}",
              lambda i: ("/api/v1/auth", api(key, "not-the-password"), 401))
        wrong = "".join("A" if c != "A" else "B" for c in key)
        timed("wrong key", lambda i: f"127.0.5.{i // 4 % 250 + 1}",
              lambda i: ("/api/v1/auth", api(wrong, password), 401))
        timed("console", lambda i: "127.0.0.1",
              lambda i: ("/admin/v1/login", {"loginName": login, "password": password}, 200))
        print(f"{BIN}: {N} sequential logins per outcome (ms)")
        print(f"{'outcome':<16} {'p50':>8} {'p99':>8}  answers (expected {'/'.join(str(w) for _, _, w in runs.values())})")
        for name, (xs, statuses, want) in runs.items():
            answers = ", ".join(f"{n}× {s}" for s, n in sorted(statuses.items()))
            print(f"{name:<16} {pct(xs, 50):>8.2f} {pct(xs, 99):>8.2f}  {answers}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
