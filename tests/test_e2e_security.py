"""Issue 9's attacks against a real `supervisor start`: each is refused, and nothing happens.

One supervisor (no api_key, as `hostfiles/demo.json`) is shared by the tests that only send
requests or add and remove their own hosts; the api_key case and the exposed, remotely
stopped one start their own.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import httpx
import pytest

from supervisor.cli.credentials import admin_key_file, join_token_file
from supervisor.cli.pidfile import default_pidfile
from tests.clients import post_chat
from tests.conftest import ROOT, RunningSupervisor, demo_hostfile, run_cli, wait_for

MODEL = "demo:tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ORIGIN = "http://app.example:3000"


def demo(**extra) -> dict:
    """hostfiles/demo.json, the file the issue's attacks were run against."""
    return {**json.loads((ROOT / "hostfiles" / "demo.json").read_text()), **extra}


@pytest.fixture(scope="module")
def sup(tmp_path_factory):
    hostfile = demo(allowed_hosts=["mac1.example"], cors_origins=[ORIGIN])
    running = RunningSupervisor(tmp_path_factory.mktemp("security"), hostfile)
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


def admin_key(sup) -> str:
    return admin_key_file(default_pidfile(sup.port)).read_text().strip()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def node_names(sup, key: str | None = None) -> list[str]:
    headers = bearer(key) if key else {}
    status = httpx.get(sup.url + "/api/cluster/status", headers=headers, timeout=10).json()
    return [n["name"] for n in status["nodes"]]


def chat_works(sup, headers: dict | None = None) -> bool:
    r = post_chat(sup, headers=headers, max_tokens=2)
    return r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def curl(*args: str) -> tuple[int, dict]:
    """The real curl, as the issue ran it; the status code and the JSON body."""
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body) if body else {}


def test_the_issues_two_requests_are_refused_and_change_nothing(sup, tmp_path):
    pwned = tmp_path / "pwned"
    payload = json.dumps(
        {
            "ssh": "localhost",
            "name": "x",
            "python": "/bin/bash",
            "env": {"BASH_ENV": f"$(id>{pwned})"},
        }
    )
    hosts = f"{sup.url}/api/cluster/hosts"
    code, body = curl("-X", "POST", hosts, "-H", "content-type: text/plain", "-d", payload)
    assert code == 401 and "admin key" in body["error"]["message"]
    code, body = curl("-X", "DELETE", f"{hosts}/local?drain_timeout=0")
    assert code == 401
    wrong = ["-H", "Authorization: Bearer not-the-admin-key"]
    assert curl("-X", "DELETE", f"{hosts}/local?drain_timeout=0", *wrong)[0] == 403

    # With the admin key, the same text/plain body is still refused (a page could send it),
    # and as JSON the start-up variable is refused by name.
    key = ["-H", f"Authorization: Bearer {admin_key(sup)}"]
    code, body = curl("-X", "POST", hosts, *key, "-H", "content-type: text/plain", "-d", payload)
    assert code == 415 and "application/json" in body["error"]["message"]
    code, body = curl(
        "-X", "POST", hosts, *key, "-H", "content-type: application/json", "-d", payload
    )
    assert code == 400 and body["error"]["param"] == "env"
    assert '"BASH_ENV" changes how a shell' in body["error"]["message"]

    assert node_names(sup) == ["local"]
    assert [a["group"] for a in sup.status()["actors"] if a["kind"] == "generation"] == ["main"]
    assert chat_works(sup)
    assert not pwned.exists()


def test_a_foreign_host_header_is_refused_on_every_route(sup):
    port = sup.port
    served = sup.status()["requests_total"]
    with httpx.Client(base_url=sup.url, timeout=30) as client:
        for path in ("/health", "/v1/models", "/no/such/route", "/api/cluster/status"):
            r = client.get(path, headers={"Host": f"evil.example:{port}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "bad_host", path
        tags = client.get("/api/tags", headers={"Host": "evil.example"})
        assert tags.status_code == 403 and "Host header" in tags.json()["error"]  # Ollama's shape
        chat = client.post("/v1/chat/completions", json=CHAT, headers={"Host": "evil.example"})
        assert chat.status_code == 403
        for host in ("localhost", f"127.0.0.1:{port}", "[::1]:80", f"MAC1.example:{port}"):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host
    assert sup.status()["requests_total"] == served  # the refused chat never reached a group


def test_cors_is_off_except_for_the_listed_origin(sup):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": ""}
    with httpx.Client(base_url=sup.url, timeout=30) as client:
        evil = client.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"}
        )
        listed = client.options(
            "/v1/chat/completions",
            headers={
                **preflight,
                "Origin": ORIGIN,
                "Access-Control-Request-Headers": "authorization",
            },
        )
        simple = client.get("/v1/models", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in evil.headers
    assert listed.status_code in (200, 204)
    assert listed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in listed.headers["access-control-allow-headers"].lower()
    assert simple.headers["access-control-allow-origin"] == ORIGIN


def test_inference_takes_curl_d_bodies_with_no_json_content_type(sup):
    chat = json.dumps({**CHAT, "stream": False, "options": {"num_predict": 2}})
    code, body = curl(f"{sup.url}/api/chat", "-d", chat)  # form content type, as Ollama's docs
    assert code == 200 and body["done"] is True
    code, body = curl(f"{sup.url}/v1/chat/completions", "-H", "content-type:", "-d", chat)
    assert code == 200 and body["choices"][0]["message"]["role"] == "assistant"


def test_the_local_cli_finds_the_admin_key_and_a_remote_one_passes_it(sup):
    pidfile = default_pidfile(sup.port)
    for secret in (admin_key_file(pidfile), join_token_file(pidfile)):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    added = run_cli("add-host", "localhost", "--name", "extra", "--url", sup.url)
    assert added.returncode == 0, added.stderr
    assert "extra" in node_names(sup)

    refused = run_cli("remove-host", "extra", "--url", sup.url, "--admin-key", "wrong")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "supervisor: remove-host refused: wrong admin key; this route changes the cluster "
        "and needs the admin key"
    )
    assert "extra" in node_names(sup)
    removed = run_cli(
        "remove-host",
        "extra",
        "--url",
        sup.url,
        "--admin-key",
        admin_key(sup),
        "--drain-timeout",
        "5",
    )
    assert removed.returncode == 0, removed.stderr
    assert node_names(sup) == ["local"]


def test_the_join_token_adds_a_host_and_nothing_else(sup):
    printed = run_cli("join-token", "--url", sup.url)
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    token = join_token_file(default_pidfile(sup.port)).read_text().strip()
    assert line == f"supervisor join 127.0.0.1:{sup.port} --token {token}"
    assert "listens on loopback only" in printed.stderr and '"host"' in printed.stderr

    address = line.split()[2]
    no_token = run_cli("join", address, "--ssh", "localhost", "--name", "j1")
    assert no_token.returncode == 2 and "join needs --token" in no_token.stderr
    joined = run_cli("join", address, "--token", token, "--ssh", "localhost", "--name", "j1")
    assert joined.returncode == 0, joined.stderr
    assert "j1" in node_names(sup)

    with httpx.Client(base_url=sup.url, headers=bearer(token), timeout=30) as client:
        leave = client.delete("/api/cluster/hosts/j1", params={"drain_timeout": 0})
        stop = client.post("/api/cluster/stop")
        again = client.get("/api/cluster/join-token")
    for refused in (leave, stop, again):
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == (
            "the join token only adds hosts; this route needs the admin key"
        )
    assert sup.proc.poll() is None and sup.health()[0] == 200
    assert "j1" in node_names(sup)
    assert run_cli("remove-host", "j1", "--url", sup.url, "--drain-timeout", "5").returncode == 0


def test_status_hides_user_names_and_paths_from_all_but_the_admin(sup):
    # A host nobody answers for (port 1): it stays declared, with a reason, and never starts.
    added = run_cli(
        "add-host",
        "alice@127.0.0.1:1",
        "--name",
        "ghost",
        "--model",
        "/srv/alice/models/x",
        "--url",
        sup.url,
    )
    assert added.returncode == 0, added.stderr
    try:
        key = admin_key(sup)
        with httpx.Client(base_url=sup.url, timeout=10) as client:
            seen = client.get("/api/cluster/status").json()
            full = client.get("/api/cluster/status", headers=bearer(key)).json()
        ghost = next(n for n in seen["nodes"] if n["name"] == "ghost")
        group = next(g for g in seen["groups"] if g["name"] == "ghost")
        assert ghost["ssh"] == "<user>@127.0.0.1:1"
        assert group["model"] == "<path>"
        assert "alice" not in json.dumps(seen) and "/srv/" not in json.dumps(seen)
        assert next(n for n in full["nodes"] if n["name"] == "ghost")["ssh"] == "alice@127.0.0.1:1"
        assert next(g for g in full["groups"] if g["name"] == "ghost")["model"] == (
            "/srv/alice/models/x"
        )
        cli = run_cli("status", "--url", sup.url, "--json")  # the local CLI is admin
        assert cli.returncode == 0 and "alice@127.0.0.1:1" in cli.stdout
    finally:
        run_cli("remove-host", "ghost", "--url", sup.url, "--drain-timeout", "0")
    assert node_names(sup) == ["local"]


def test_with_an_api_key_the_inference_key_cannot_change_the_cluster(start_supervisor):
    sup = start_supervisor(demo(api_key="sk-inference"))
    sup.wait_healthy()
    inference = bearer("sk-inference")
    with httpx.Client(base_url=sup.url, timeout=30) as client:
        join = client.post(
            "/api/cluster/hosts", json={"ssh": "localhost", "name": "x"}, headers=inference
        )
        leave = client.delete(
            "/api/cluster/hosts/local", params={"drain_timeout": 0}, headers=inference
        )
        stop = client.post("/api/cluster/stop", headers=inference)
        admin_models = client.get("/v1/models", headers=bearer(admin_key(sup)))
        preflight = client.options(  # no cors_origins in this hostfile: CORS is off
            "/v1/chat/completions",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
    for refused in (join, leave, stop):
        assert refused.status_code == 403, refused.text
    assert admin_models.status_code == 200  # an admin may do everything
    assert "access-control-allow-origin" not in preflight.headers
    assert node_names(sup, "sk-inference") == ["local"]
    assert sup.proc.poll() is None and chat_works(sup, inference)


def test_an_exposed_api_warns_and_a_remote_admin_stops_it(start_supervisor, tmp_path):
    pidfile = tmp_path / "elsewhere.pid"  # no pidfile where the CLI looks: as on another machine
    sup = start_supervisor(
        demo_hostfile(), extra_args=["--host", "0.0.0.0", "--pidfile", str(pidfile)]
    )
    sup.wait_healthy()
    warnings = sup.status()["warnings"]
    assert len(warnings) == 1 and "no api_key" in warnings[0]
    assert any(e.get("event") == "api_exposed" for e in sup.log_lines())
    key_file = admin_key_file(pidfile)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    no_key = run_cli("stop", "--url", sup.url)
    assert no_key.returncode == 1 and "no supervisor pidfile" in no_key.stderr
    wrong = run_cli("stop", "--url", sup.url, "--admin-key", "wrong")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert sup.proc.poll() is None

    stopped = run_cli("stop", "--url", sup.url, "--admin-key", key_file.read_text().strip())
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"supervisor: stopped ({sup.url})"
    assert sup.proc.wait(30) == 0
    stopping = [e for e in sup.log_lines() if e.get("event") == "stopping"]
    assert stopping and stopping[0]["reason"] == "POST /api/cluster/stop"
    wait_for(lambda: not key_file.exists(), 5, "the admin key file to be removed")
    assert not join_token_file(pidfile).exists()


@pytest.mark.parametrize("name", ["MLXS_API_KEY", "MLXS_ADMIN_KEY"])
def test_an_empty_key_in_the_environment_is_refused(tmp_path, name):
    hostfile = tmp_path / "hostfile.json"
    hostfile.write_text(json.dumps(demo_hostfile()))
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "start", str(hostfile), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, name: ""},
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"supervisor: {name} is set but empty; unset it or set a long random string\n"
    )
