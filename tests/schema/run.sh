#!/usr/bin/env bash
# schemathesis against /openapi.json of a fresh `keygate serve`: every operation, with the
# provider token, an admin console session with its CSRF header and a cloud API session (the
# org's rate limits lifted). Fails on any failure of the checks below.
#
# Every operation is exercised with live credentials: those that end them (logouts, key
# changes, which end the org's API sessions, and the provider's changes to an org) run one
# at a time, each with a fresh org and sessions and `{id}` pinned to that org (or its key);
# then everything else in one run. Answers after a session ended are 401s, which the document
# lists.
#
#   tests/schema/run.sh            # SCHEMA_MAX_EXAMPLES (default 25) examples per operation
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/schema/requirements.txt
fi
cargo build --bin keygate
work=$(mktemp -d)
export KG_PROVIDER_TOKEN=$(head -c 48 /dev/urandom | base64 | tr -d '/+=')
KEYGATE_PROVIDER_TOKEN=$KG_PROVIDER_TOKEN target/debug/keygate serve --listen 127.0.0.1:0 \
    --data-dir "$work/data" >"$work/out" 2>"$work/keygate.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "keygate listening on" "$work/out" && break; sleep 0.1; done
base=$(sed -n 's/^keygate listening on //p' "$work/out")
[ -n "$base" ] || { cat "$work/keygate.log"; echo "keygate did not start"; exit 1; }

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# These end the credentials they run with (or change the fuzzed org): each runs in pass 2 with
# fresh ones, and with `{id}` set to the fuzzed org's key (cloud) or org (provider).
ending=(
    "POST /admin/v1/logout" "PUT /admin/v1/apiKey" "POST /admin/v1/apiKey" "DELETE /admin/v1/apiKey"
    "POST /admin/v1/apiKey/regenerate"
    "DELETE /authenticatedSession" "DELETE /auth" "DELETE /api/v1/authenticatedSession" "DELETE /api/v1/auth"
    "POST /api/v1/apiKeys" "PUT /api/v1/apiKeys/{id}" "DELETE /api/v1/apiKeys/{id}"
    "POST /api/v1/apiKeys/{id}/regenerate"
    "POST /provider/v1/orgs/{id}/admins" "DELETE /provider/v1/orgs/{id}/admins/{adminId}"
    "POST /provider/v1/orgs/{id}/apiKey/disable" "POST /provider/v1/orgs/{id}/apiKey/enable"
    "PUT /provider/v1/orgs/{id}/limits" "PUT /provider/v1/orgs/{id}/subscription"
)
# Never fuzzed: they retire or revoke the very token the run uses (tests/it/operators.rs
# covers them).
never=(
    "POST /provider/v1/bootstrap/retire" "DELETE /provider/v1/tokens/{id}"
    "POST /provider/v1/tokens/{id}/rotate"
)
{ cat tests/schema/schemathesis.toml; printf '\n[parameters]\n"path.id" = "${KG_PATH_ID}"\n'; } >"$work/pinned.toml"
# One worker: hypothesis describes lambdas with `ast`, which under CPython 3.11.7 and two
# threads sometimes fails with "AST constructor recursion depth mismatch" (CPython gh-106905).
run() {
    local config=$1
    shift
    "$venv/bin/schemathesis" --no-color --config-file "$config" run "$base/openapi.json" \
        --checks "$checks" --max-examples "${SCHEMA_MAX_EXAMPLES:-25}" --workers 1 \
        --phases examples,coverage,fuzzing --suppress-health-check all \
        --generation-database none --seed 13 "$@"
}
status=0
# Fresh credentials for the fuzzed org number $1 (a failure here ends the run).
credentials() {
    local assignments
    assignments=$(python3 tests/schema/setup.py "$base" "$KG_PROVIDER_TOKEN" "$1") || exit 1
    eval "$assignments"
}
# Pass 2 comes first: pass 1 fuzzes the logins, and the failed ones throttle further logins
# from this address.
echo "== operations that end sessions or change the key, each with fresh credentials"
n=0
for op in "${ending[@]}"; do
    n=$((n + 1))
    credentials "$n"
    case "$op" in
        *" /provider/"*) export KG_PATH_ID=$KG_ORG_ID ;;
        *) export KG_PATH_ID=$KG_KEY_ID ;;
    esac
    echo "-- $op"
    run "$work/pinned.toml" --include-name "$op" >"$work/pass.log" 2>&1 || { status=1; cat "$work/pass.log"; }
    grep -E "generated" "$work/pass.log" || true
done
echo "== every other operation"
credentials 0
excluded=()
for op in "${ending[@]}" "${never[@]}"; do excluded+=(--exclude-name "$op"); done
run tests/schema/schemathesis.toml "${excluded[@]}" 2>&1 || status=1
if [ "$status" -ne 0 ]; then
    cp "$work/keygate.log" target/schemathesis-keygate.log
    echo "schemathesis found failures (keygate's log: target/schemathesis-keygate.log)"
fi
exit "$status"
