"""Compatibility suite: the real `pyzscaler` client against a real `keygate serve`.

Run by `.ci/run` (which makes the venv); locally:
    python3 -m venv .venv && .venv/bin/pip install -r tests/compat/requirements.txt
    cargo build && .venv/bin/pytest tests/compat

Against a running deployment: set KEYGATE_COMPAT_BASE_URL (e.g. a load balancer) and
KEYGATE_COMPAT_PROVIDER_TOKEN; org names get a random suffix so runs do not collide.

Over HTTPS: set KEYGATE_COMPAT_TLS_CERT and KEYGATE_COMPAT_TLS_KEY (the server's PEM files)
and REQUESTS_CA_BUNDLE (their CA, which `requests`, so pyzscaler, and this file's own calls
trust); `.ci/run` does both runs.
"""

import json
import os
import re
import secrets
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest
import pyzscaler.utils
from pyzscaler import ZCON, ZIA
from restfly.errors import APIError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("KEYGATE_BIN", os.path.join(ROOT, "target", "debug", "keygate"))
# Against a running deployment (e.g. the topology suite's nginx in front of three nodes):
# KEYGATE_COMPAT_BASE_URL and its provider token; otherwise the suite starts its own server.
BASE_URL = os.environ.get("KEYGATE_COMPAT_BASE_URL")
PROVIDER_TOKEN = os.environ.get("KEYGATE_COMPAT_PROVIDER_TOKEN") or (
    "compat-provider-token-" + secrets.token_hex(16)
)
PASSWORD = "compat-password-" + secrets.token_hex(8)
TLS_CERT = os.environ.get("KEYGATE_COMPAT_TLS_CERT")
TLS_KEY = os.environ.get("KEYGATE_COMPAT_TLS_KEY")
# urllib does not read REQUESTS_CA_BUNDLE; give it the same CA.
CA_BUNDLE = os.environ.get("REQUESTS_CA_BUNDLE")
SSL_CONTEXT = ssl.create_default_context(cafile=CA_BUNDLE) if CA_BUNDLE else None


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=SSL_CONTEXT) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text else None), resp.headers
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, (json.loads(text) if text else None), e.headers


@pytest.fixture(scope="module")
def server():
    if BASE_URL:
        assert os.environ.get("KEYGATE_COMPAT_PROVIDER_TOKEN"), "KEYGATE_COMPAT_BASE_URL needs the provider token"
        yield BASE_URL.rstrip("/")
        return
    data_dir = tempfile.mkdtemp(prefix="keygate-compat-")
    env = dict(os.environ, KEYGATE_PROVIDER_TOKEN=PROVIDER_TOKEN, RUST_LOG="warn")
    args = [BINARY, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir]
    if TLS_CERT:
        assert TLS_KEY and CA_BUNDLE, "HTTPS needs the key and REQUESTS_CA_BUNDLE too"
        args += ["--tls-cert", TLS_CERT, "--tls-key", TLS_KEY]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    base = None
    for line in proc.stdout:
        m = re.match(r"keygate listening on (https?://\S+)", line)
        if m:
            base = m.group(1)
            break
    assert base, "keygate did not print its address"
    assert base.startswith("https://" if TLS_CERT else "http://"), base
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def new_org(base, slug):
    """Creates an org with one FULL admin; returns (login, key) with the key revealed by the admin."""
    slug = f"{slug}-{secrets.token_hex(3)}"
    login = f"admin@{slug}.example"
    status, org, _ = http(
        "POST",
        f"{base}/provider/v1/orgs",
        {
            "name": f"Org {slug}",
            "admins": [{"loginName": login, "password": PASSWORD, "role": "FULL"}],
            "subscription": {"enabled": True, "expiresAt": None},
        },
        {"Authorization": f"Bearer {PROVIDER_TOKEN}"},
    )
    assert status == 201, org
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(), urllib.request.HTTPSHandler(context=SSL_CONTEXT)
    )
    req = urllib.request.Request(
        f"{base}/admin/v1/login",
        data=json.dumps({"loginName": login, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    csrf = json.loads(opener.open(req).read())["csrfToken"]
    req = urllib.request.Request(f"{base}/admin/v1/apiKey/reveal", method="POST", headers={"X-CSRF-Token": csrf})
    key = json.loads(opener.open(req).read())["keyValue"]
    assert re.fullmatch(r"[A-Za-z0-9]{12}", key)
    return org["id"], login, key


def expect_auth_failed(make):
    with pytest.raises(APIError) as err:
        make()
    assert err.value.response.status_code == 401
    assert err.value.response.json()["code"] == "AUTHENTICATION_FAILED"


def test_zia_session_and_audit_report(server):
    _, login, key = new_org(server, "zia")
    zia = ZIA(api_key=key, username=login, password=PASSWORD, override_url=f"{server}/api/v1")
    status = zia.session.status()
    assert status.auth_type == "ADMIN_LOGIN"

    now = int(time.time() * 1000)
    assert zia.audit_logs.create(start_time=str(now - 3_600_000), end_time=str(now + 60_000)) == 204
    assert zia.audit_logs.status().status == "COMPLETE"
    report = zia.audit_logs.get_report()
    lines = report.strip().splitlines()
    assert lines[0].startswith("Time,Action")
    actions = [line.split(",")[1] for line in lines[1:]]
    assert "ORG_CREATE" in actions and "KEY_PROVISION" in actions and "LOGIN_SUCCESS" in actions
    assert key not in report

    assert zia.session.delete() == 204
    with pytest.raises(APIError) as err:
        zia.session.status()
    assert err.value.response.status_code == 401
    assert err.value.response.json()["code"] == "SESSION_NOT_VALID"


def test_zcon_list_and_regenerate(server):
    _, login, key = new_org(server, "zcon")
    url = f"{server}/api/v1"
    zcon = ZCON(api_key=key, username=login, password=PASSWORD, override_url=url)
    keys = zcon.admin.list_api_keys()
    assert len(keys) == 1
    assert keys[0].key_value == key
    assert keys[0].status == "ENABLED"
    assert keys[0].permissions == ["READ", "WRITE"]
    assert keys[0].base_url == url

    new = zcon.admin.regenerate_api_key(keys[0].id)
    assert new.key_value != key and re.fullmatch(r"[A-Za-z0-9]{12}", new.key_value)

    expect_auth_failed(lambda: ZCON(api_key=key, username=login, password=PASSWORD, override_url=url))
    fresh = ZCON(api_key=new.key_value, username=login, password=PASSWORD, override_url=url)
    assert fresh.admin.list_api_keys()[0].key_value == new.key_value
    # pyzscaler 1.6.0's ZCON session.delete() reads `.status` off a requests Response and
    # raises AttributeError whatever the server answers; log out with its session directly.
    assert fresh._session.delete(f"{url}/auth").status_code == 204
    with pytest.raises(APIError) as err:
        fresh.admin.list_api_keys()
    assert err.value.response.status_code == 401


def test_failures_are_uniform(server, monkeypatch):
    _, login, key = new_org(server, "fail")
    url = f"{server}/api/v1"
    # Every character changed: the obfuscation samples only some positions of the key.
    wrong_key = "".join("B" if c != "B" else "C" for c in key)
    expect_auth_failed(lambda: ZIA(api_key=wrong_key, username=login, password=PASSWORD, override_url=url))
    expect_auth_failed(lambda: ZIA(api_key=key, username=login, password=PASSWORD + "x", override_url=url))
    # A stale timestamp: the client's own clock, 20 minutes behind.
    real_time = time.time
    monkeypatch.setattr(pyzscaler.utils.time, "time", lambda: real_time() - 1200)
    expect_auth_failed(lambda: ZIA(api_key=key, username=login, password=PASSWORD, override_url=url))
    monkeypatch.setattr(pyzscaler.utils.time, "time", real_time)
    # The right credentials still work: three failures stay under the throttle.
    ok = ZIA(api_key=key, username=login, password=PASSWORD, override_url=url)
    assert ok.session.status().auth_type == "ADMIN_LOGIN"


def test_zia_config_status_and_activate(server):
    """pyzscaler's `zia.config.status()` / `activate()` (GET /status, POST /status/activate)."""
    _, login, key = new_org(server, "activate")
    zia = ZIA(api_key=key, username=login, password=PASSWORD, override_url=f"{server}/api/v1")
    assert zia.config.status() == "ACTIVE"
    assert zia.config.activate() == "ACTIVE"
    assert zia.session.delete() == 204
    with pytest.raises(APIError) as err:
        zia.config.status()
    assert err.value.response.status_code == 401
