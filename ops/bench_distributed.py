"""A two-rank tensor-parallel group: ours (supervisor) against mlx_lm.server under ring ranks.

    python ops/bench_distributed.py [--model demo:small] [--tokens 128] [--idle 10]

Both run the same model over two ring ranks on this machine, each rank pinned to its
own core and with the same BLAS; printed: CPU each rank burns while idle (ring ranks
busy-poll inside a collective) and single-stream decode speed, with ratios. Figures
are for comparison within one run, not absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.models.resolve import resolve_model  # noqa: E402
from supervisor.supervision.spawner import openblas_path  # noqa: E402

EOS_BIAS = -100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"bench: nothing answered at {url} within {timeout:.0f} s")


def idle_cpu(pids: list[int], seconds: float) -> list[float]:
    """Percent of one core each process used over ``seconds`` of no requests."""
    processes = [psutil.Process(p) for p in pids]
    before = [sum(p.cpu_times()[:2]) for p in processes]
    time.sleep(seconds)
    after = [sum(p.cpu_times()[:2]) for p in processes]
    return [100 * (a - b) / seconds for a, b in zip(after, before, strict=True)]


def decode_tps(url: str, model: str, tokens: int, bias: dict[str, float]) -> float:
    body = {
        "model": model,
        "prompt": "A cluster of Macs",
        "max_tokens": tokens,
        "temperature": 0,
        "logit_bias": bias,
    }
    request = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:
        got = json.load(response)["usage"]["completion_tokens"]
    return got / (time.monotonic() - began)


def ours(model: str, tmp: Path, tokens: int, idle: float, bias) -> tuple[list[float], float]:
    port = free_port()
    hostfile = tmp / "ours.json"
    hosts = [{"ssh": "localhost", "name": "a"}, {"ssh": "localhost", "name": "b"}]
    hostfile.write_text(json.dumps({"model": model, "hosts": hosts, "log_format": "json"}))
    with open(tmp / "ours.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "start",
                str(hostfile),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        with urllib.request.urlopen(url + "/api/cluster/status") as r:
            actors = json.load(r)["actors"]
        pids = [a["pid"] for a in sorted(actors, key=lambda a: a["rank"]) if a["group"]]
        decode_tps(url, model, 8, bias)  # warm up
        return idle_cpu(pids, idle), decode_tps(url, model, tokens, bias)
    finally:
        proc.terminate()
        proc.wait(60)


def peer(path: Path, tmp: Path, tokens: int, idle: float, bias) -> tuple[list[float], float]:
    port, ring = free_port(), [free_port(), free_port()]
    hostfile = tmp / "ring.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ring]))
    blas = openblas_path()
    procs = []
    try:
        for rank in range(2):
            env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
            if blas:
                env["LD_PRELOAD"] = blas
            command = [sys.executable, "-m", "mlx_lm.server", "--model", str(path)]
            procs.append(
                subprocess.Popen(
                    ["taskset", "-c", str(rank), *command, "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        url = f"http://127.0.0.1:{port}"
        wait_until(url + "/v1/models")
        decode_tps(url, "default_model", 8, bias)
        cpu = idle_cpu([p.pid for p in procs], idle)
        return cpu, decode_tps(url, "default_model", tokens, bias)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo:small")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    args = parser.parse_args()
    path = resolve_model(args.model)
    eos = json.loads((path / "config.json").read_text()).get("eos_token_id", [])
    bias = {str(t): EOS_BIAS for t in (eos if isinstance(eos, list) else [eos])}
    with tempfile.TemporaryDirectory() as tmp:
        our_idle, our_tps = ours(args.model, Path(tmp), args.tokens, args.idle, bias)
        their_idle, their_tps = peer(path, Path(tmp), args.tokens, args.idle, bias)
    print(f"model {args.model}, 2 ranks tensor-parallel (ring, one core each)")
    print("                       ours   mlx_lm.server   ratio")
    for rank in range(2):
        mine, theirs = our_idle[rank], their_idle[rank]
        print(
            f"idle CPU rank {rank} (%)  {mine:6.1f}   {theirs:13.1f}   "
            f"{mine / theirs if theirs else float('nan'):5.2f}"
        )
    print(f"decode tok/s           {our_tps:6.1f}   {their_tps:13.1f}   {our_tps / their_tps:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
