"""The contenders of ``ops/bench`` over HTTP: ``mlx_lm.server`` and our supervisor.

Both are real subprocesses on free loopback ports, streamed by one bare httpx
client; every process started here, and every descendant, is ended by PID.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from bench_lib import (
    EOS_BIAS,
    REQUEST_TIMEOUT,
    Batch,
    Stream,
    blas_of,
    chat_messages,
    process_cpu,
)

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 300.0
# mlx_lm.server is a socketserver.ThreadingHTTPServer, whose listen backlog is 5: 32
# simultaneous connects overflow it and Linux resets the excess after ~1 s (measured:
# 11-15 of 32 streams failed with ReadError). uvicorn's is 2048. Same code, longer queue,
# so the comparison measures the engine rather than a socketserver default.
LISTEN_BACKLOG = 2048
MLX_LM_SERVER = (
    "import socketserver, sys; "
    "socketserver.TCPServer.request_queue_size = int(sys.argv.pop(1)); "
    "sys.argv[0] = 'mlx_lm.server'; "
    "from mlx_lm.server import main; main()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpContender:
    """An OpenAI-compatible server streamed with a bare httpx client (little client cost)."""

    name = "?"
    model_field: str | None = None
    extra_body: dict = {}

    def __init__(self, eos_ids: Sequence[int]):
        self.url = ""
        self.blas = "?"
        self._bias = {str(t): EOS_BIAS for t in eos_ids}
        self._processes = Processes()
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None

    def body(self, tag: str, tokens: int, messages: list[dict] | None = None) -> dict:
        body = {
            "messages": messages or chat_messages(tag),
            "max_tokens": tokens,
            "temperature": 0.0,
            "logit_bias": self._bias,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }
        if self.model_field is not None:
            body["model"] = self.model_field
        return body

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of the processes serving this contender (not the client's), by role."""
        self._processes.remember_descendants()
        return {"server": sum(process_cpu(p) for p in self._processes.seen.values())}

    def single(self, tag: str, tokens: int) -> Stream:
        return self.run(self._batch([tag], tokens)).streams[0]

    def concurrent(self, tags: Sequence[str], tokens: int) -> Batch:
        return self.run(self._batch(tags, tokens))

    def run(self, coroutine):
        """Run a coroutine of this contender's streams (``stream``) on its event loop."""
        return self._loop.run_until_complete(coroutine)

    async def _batch(self, tags: Sequence[str], tokens: int) -> Batch:
        start = time.perf_counter()
        streams = await asyncio.gather(*(self.stream(t, tokens) for t in tags))
        return Batch(list(streams), time.perf_counter() - start)

    async def stream(
        self,
        tag: str,
        tokens: int,
        messages: list[dict] | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> Stream:
        """One streamed chat completion; ``on_first`` is called when its first token arrives."""
        if self._client is None:  # one client per contender: its set-up is not per request
            limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
            self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits)
        first = last = 0.0
        usage = None
        start = time.perf_counter()
        request = self._client.stream(
            "POST", self.url + "/v1/chat/completions", json=self.body(tag, tokens, messages)
        )
        async with request as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"{self.name}: HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    if not first and on_first is not None:
                        on_first()
                    first = first or now
                    last = now
        if usage is None:
            raise RuntimeError(f"{self.name}: the stream carried no usage")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return Stream(
            usage["completion_tokens"],
            first - start,
            last - first,
            cached=cached or 0,
            prompt=usage.get("prompt_tokens", 0),
        )

    def _boot(self, command: list[str], log: Path, ready_path: str) -> None:
        """Start the server and wait until ``ready_path`` answers; end it if it never does."""
        try:
            proc = self._processes.start(command, log)
            _wait_http(self.url + ready_path, proc, log, self.name)
            self._processes.remember_descendants()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self._client is not None:
                self._loop.run_until_complete(self._client.aclose())
            self._loop.close()
        finally:
            self._processes.stop_all()


class MlxLmServer(HttpContender):
    name = "mlx_lm.server"

    def __init__(self, model_path: Path, eos_ids: Sequence[int], log_dir: Path):
        super().__init__(eos_ids)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-c", MLX_LM_SERVER, str(LISTEN_BACKLOG)]
        command += ["--model", str(model_path)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        self._boot(command, log_dir / "mlx_lm_server.log", "/v1/models")
        self.blas = blas_of(self._processes.roots[0].pid)


class OurSupervisor(HttpContender):
    name = "ours (supervisor)"
    extra_body = {"ignore_eos": True}

    def __init__(self, spec: str, eos_ids: Sequence[int], log_dir: Path):
        super().__init__(eos_ids)
        self.model_field = spec
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        hostfile = log_dir / f"hostfile-{spec.replace(':', '-').replace('/', '-')}.json"
        hosts = [{"ssh": "localhost", "name": "local"}]
        api = {"host": "127.0.0.1", "port": port}
        hostfile.write_text(json.dumps({"model": spec, "api": api, "hosts": hosts}))
        command = [sys.executable, "-m", "supervisor", "start", str(hostfile)]
        self._boot(command, log_dir / "supervisor.log", "/health")
        self.supervisor_pid = self._processes.roots[0].pid
        self.actor_pid = self._generation_pid()
        self.blas = blas_of(self.actor_pid)

    def cpu_seconds(self) -> dict[str, float]:
        self._processes.remember_descendants()
        known = {self.supervisor_pid: "supervisor", self.actor_pid: "generation actor"}
        roles = dict.fromkeys(("supervisor", "generation actor", "other actors"), 0.0)
        for pid, process in self._processes.seen.items():
            roles[known.get(pid, "other actors")] += process_cpu(process)
        return roles

    def follow_restart(self) -> None:
        """Track the generation actor the supervisor runs now (a restart gives a new PID)."""
        try:
            self.actor_pid = self._generation_pid() or self.actor_pid
        except (OSError, ValueError, KeyError, StopIteration):
            pass  # restarting right now: the next pattern's call finds it

    def _generation_pid(self) -> int:
        with urllib.request.urlopen(self.url + "/api/cluster/status", timeout=10) as r:
            status = json.load(r)
        return next(a["pid"] for a in status["actors"] if a["kind"] == "generation")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, name: str) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {STARTUP_TIMEOUT:.0f} s")


@dataclass
class Processes:
    """Every process the benchmark started, and their descendants, ended by PID."""

    seen: dict[int, psutil.Process] = field(default_factory=dict)
    roots: list[subprocess.Popen] = field(default_factory=list)

    def start(self, command: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        self.roots.append(proc)
        self.seen[proc.pid] = psutil.Process(proc.pid)
        return proc

    def remember_descendants(self) -> None:
        for root in self.roots:
            try:
                kids = psutil.Process(root.pid).children(recursive=True)
            except psutil.Error:
                continue
            for kid in kids:
                self.seen.setdefault(kid.pid, kid)

    def stop_all(self, grace: float = 15.0) -> None:
        self.remember_descendants()
        for root in self.roots:
            if root.poll() is None:
                root.send_signal(signal.SIGTERM)
        for root in self.roots:
            try:
                root.wait(grace)
            except subprocess.TimeoutExpired:
                root.kill()
                root.wait()
        for process in self.seen.values():
            try:
                process.kill()  # psutil checks it is still the process it saw (no PID reuse)
            except psutil.Error:
                pass
        self.roots.clear()
        self.seen.clear()


def temporary_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mlx-bench-"))
