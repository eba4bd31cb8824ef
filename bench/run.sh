#!/usr/bin/env bash
# keygate benchmarks: every scenario of PRODUCT.md section 8 in one run (see BENCHMARKS.md).
#
#   bench/run.sh                    # the whole run
#   BENCH_ONLY=1,3 bench/run.sh     # some scenarios; other settings: bench/bench.py's docstring
#
# Builds the release binaries, installs the load generators if missing (wrk from Debian, oha
# from crates.io, nginx-light from Debian for scenario 2), then runs bench/bench.py, which
# starts keygate on loopback ports with fresh data directories and prints one table per
# scenario. Results also go to target/bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v wrk >/dev/null || { echo "installing wrk (Debian)"; apt_install wrk; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "installing nginx-light (Debian)"; apt_install nginx-light; }
command -v taskset >/dev/null || { echo "installing util-linux (taskset)"; apt_install util-linux; }
command -v psql >/dev/null || { echo "installing postgresql-client (scenario 7)"; apt_install postgresql-client; }
if ! command -v oha >/dev/null; then
    echo "installing oha 1.16.0 from crates.io (cargo install; takes several minutes once)"
    cargo install --locked oha@1.16.0
fi

echo "building keygate and keygate-bench-seed (release)"
cargo build --release --bin keygate --bin keygate-bench-seed

exec python3 bench/bench.py "$@"
