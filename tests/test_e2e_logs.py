"""`supervisor logs` against a real supervisor: its own lines and its actors', one request's
lines, a live follow (-f) over SSE, bounded followers, redaction, and bad input."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from supervisor.cli.credentials import find_admin_key
from tests.conftest import ROOT, demo_hostfile, run_cli, wait_for


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from tests.conftest import RunningSupervisor

    running = RunningSupervisor(
        tmp_path_factory.mktemp("logs"), demo_hostfile(logs={"lines": 500, "followers": 1})
    )
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


def cli_lines(*args: str) -> list[dict]:
    done = run_cli("logs", *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def chat(url: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=60, max_retries=0)
    return client.chat.completions.create(
        model="demo:tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )


def test_the_newest_lines_include_the_supervisors_and_its_actors(logged):
    def actor_lines_in():
        lines = cli_lines("-n", "50", "--json", "--url", logged.url)
        relayed = [x for x in lines if x.get("source") == "actor" and x.get("actor_id")]
        return relayed and lines

    lines = wait_for(actor_lines_in, 30, "relayed actor lines")
    assert len(lines) <= 50
    assert any(x["event"] == "api_listening" and x["port"] == logged.port for x in lines)
    stamps = [x["timestamp"] for x in lines]
    assert stamps == sorted(stamps)  # oldest first
    loaded = [x for x in lines if x["event"] == "model_loaded"]
    assert loaded and loaded[0]["node"] == "localhost" and loaded[0]["source"] == "actor"
    # the human form says the same, one line each
    plain = run_cli("logs", "-n", "50", "--url", logged.url)
    assert plain.returncode == 0 and "api_listening" in plain.stdout
    assert f"actor_id={loaded[0]['actor_id']}" in plain.stdout


def test_a_requests_lines_are_found_by_its_id(logged):
    reply = chat(logged.url)
    lines = wait_for(
        lambda: cli_lines("--request", reply.id, "--json", "--url", logged.url),
        10,
        "the request's lines",
    )
    assert {x["request_id"] for x in lines} == {reply.id}
    ended = [x for x in lines if x["event"] == "request_ended"]
    assert len(ended) == 1 and ended[0]["status"] == "ok"
    assert ended[0]["completion_tokens"] == reply.usage.completion_tokens
    assert cli_lines("--request", reply.id + "x", "--json", "--url", logged.url) == []
    assert all(
        x["level"] in ("warning", "error", "critical")
        for x in cli_lines("--level", "warning", "-n", "500", "--json", "--url", logged.url)
    )


class Follower:
    """`supervisor logs -f --json` as a process; its stdout read by a thread, with deadlines."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "logs", "-f", "-n", "1", "--json", "--url", url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, found, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = json.loads(self.lines.get(timeout=left))
            except queue.Empty:
                break
            if found(line):
                return line
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def end(self) -> tuple[int, str]:
        """Ctrl-C, as a person ends it; killed by PID if that fails."""
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read()


def test_follow_prints_lines_written_after_it_started(logged):
    follower = Follower(logged.url)
    try:
        follower.until(lambda x: True, 30, "the newest line, printed first")  # connected
        # A second follower is one too many (hostfile logs.followers = 1): one line, exit 2.
        refused = run_cli("logs", "-f", "--url", logged.url, timeout=30)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1 and "logs.followers" in refused.stderr
        reply = chat(logged.url)
        ended = follower.until(
            lambda x: x.get("request_id") == reply.id and x["event"] == "request_ended",
            30,
            "the request's line, live",
        )
        assert ended["status"] == "ok"
    finally:
        code, err = follower.end()
    assert code == 0 and "Traceback" not in err, err

    # The server let the ended follower's slot go: another may follow now.
    def follows_again():
        second = Follower(logged.url)
        try:
            second.until(lambda x: True, 10, "a line")
            return True
        except AssertionError:
            return False
        finally:
            second.end()

    wait_for(follows_again, 30, "the follower slot to be free again")


def test_callers_without_the_admin_key_see_no_paths(logged):
    url = logged.url + "/api/cluster/logs?n=500"
    shown = httpx.get(url, timeout=10).json()
    key = find_admin_key(logged.url, None, {})
    assert key, "the local admin key file"
    full = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    loaded = [x for x in full if x["event"] == "model_loaded"]
    assert loaded and loaded[0]["path"].startswith("/")
    hidden = [x for x in shown if x["event"] == "model_loaded"]
    assert hidden and hidden[0]["path"] == "<path>"


@pytest.mark.parametrize(
    ("query", "param"),
    [("n=0", "n"), ("n=ten", "n"), ("level=loud", "level"), ("follow=maybe", "follow")],
)
def test_bad_parameters_are_400_naming_them(logged, query, param):
    answer = httpx.get(f"{logged.url}/api/cluster/logs?{query}", timeout=10)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]


@pytest.mark.parametrize(
    "args",
    [["-n", "0"], ["-n", "many"], ["--level", "loud"], ["--bogus"], ["-f", "extra"]],
)
def test_bad_flags_exit_2_with_one_line(args):
    done = run_cli("logs", *args, "--url", "http://127.0.0.1:9", timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("supervisor: ")
