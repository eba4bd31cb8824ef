"""Sets up what schemathesis authenticates with against a fresh `keygate serve`: an org with
lifted rate limits and no call threshold, an admin console session (cookie + CSRF token), and
a cloud API login body (obfuscated key, valid for the server's timestamp window), printed as
shell assignments for tests/schema/run.sh."""

import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench  # noqa: E402  (its HTTP client and the key obfuscation)

base, provider_token = sys.argv[1], sys.argv[2]
run = sys.argv[3] if len(sys.argv) > 3 else "0"
login, password = f"fuzz{run}@schema.example", "schemathesis-password-1"
http = bench.Http(base)
auth = {"Authorization": f"Bearer {provider_token}"}
_, org = http.json("POST", "/provider/v1/orgs", {
    "name": f"Schema org {run}", "subscription": {"enabled": True, "expiresAt": None},
    "admins": [{"loginName": login, "password": password, "role": "FULL"}]}, auth, expect=(201,))
http.json("PUT", f"/provider/v1/orgs/{org['id']}/limits", bench.OPEN_LIMITS, auth)
h, body = http.json("POST", "/admin/v1/login", {"loginName": login, "password": password})
console = bench.cookie(h, "keygate_console")
csrf = body["csrfToken"]
hh = {"Cookie": f"keygate_console={console}", "X-CSRF-Token": csrf}
_, k = http.json("POST", "/admin/v1/apiKey/reveal", None, hh)
key = k["keyValue"]
ts = int(time.time() * 1000)
api_login = {"apiKey": bench.obfuscate(key, ts), "username": login, "password": password, "timestamp": ts}
session = bench.api_login(base, login, password, key)
_, keys = http.json("GET", "/api/v1/apiKeys", None, {"Cookie": f"JSESSIONID={session}"})
out = {
    "KG_ORG_ID": str(org["id"]),
    "KG_CONSOLE": console,
    "KG_CSRF": csrf,
    "KG_SESSION": session,
    "KG_KEY_ID": str(keys[0]["id"]),
    "KG_API_LOGIN": json.dumps(api_login),
    "KG_API_KEY_OBFUSCATED": api_login["apiKey"],
    "KG_API_USER": login,
    "KG_API_PASSWORD": password,
    "KG_API_TS": str(ts),
}
for name, value in out.items():
    print(f"export {name}={shlex.quote(value)}")
