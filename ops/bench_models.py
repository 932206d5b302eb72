"""``ops/bench models``: MB/s of each path model bytes take, against a peer in the same run.

    ops/bench models [--mb 256] [--rounds 3] [--only hub,sftp,share] [--json FILE]

- **hub**: the sync actor's download (``actors.sync.download``: snapshot_download with our
  byte-counting tqdm and the sha256 manifest after it) against a bare
  ``huggingface_hub.snapshot_download`` of the same repo, from tests/fake_hub.py on loopback.
- **sftp**: ``supervisor.models.transfer.copy_files`` this machine -> a node over a real
  loopback sshd, one file and the same bytes as 4 files with 4 in flight, against OpenSSH's
  ``scp`` of the same files to the same server.
- **share**: ``supervisor.models.share_path.share_over_group`` (mlx_lm.share's functions over a
  2-rank ring, one rank here and one through the sshd) against our SFTP path, same file.

Rounds alternate which contender goes first; medians are printed, and the ratio ours / peer.
Loopback on a 2-core VM measures CPU cost (encryption, hashing, copies), not a network:
between Macs the link bounds every path. docs/benchmarks.md records runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from supervisor.models.transfer import Copy, LocalEndpoint, SSHEndpoint, copy_files  # noqa: E402
from supervisor.ssh.connection import SSHConnector, close_connections  # noqa: E402
from supervisor.ssh.target import Endpoint as SSHAddress  # noqa: E402
from tests.fake_hub import FakeHub  # noqa: E402
from tests.sshd import Sshd, running_sshd  # noqa: E402

MB = 1_000_000
PATHS = ("hub", "sftp", "share")


def make_file(path: Path, nbytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = nbytes
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            f.write(chunk)
            left -= len(chunk)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------- hub


def bench_hub(tmp: Path, nbytes: int, rounds: int) -> dict:
    from huggingface_hub import snapshot_download

    from actors.sync.download import download
    from actors.sync.progress import ProgressReporter

    repo_dir = tmp / "repo"
    make_file(repo_dir / "model.safetensors", nbytes)
    (repo_dir / "config.json").write_text('{"model_type": "llama"}')
    hub = FakeHub()
    hub.add_repo("bench/model", repo_dir)
    hub.start()
    env = {"HF_ENDPOINT": hub.url}
    try:
        ours, peer = [], []
        for r in range(rounds):

            def run_ours(r=r) -> None:
                reporter = ProgressReporter(lambda m: True, "bench")
                (tmp / f"ours{r}").mkdir(parents=True)
                download(tmp / f"ours{r}", env, reporter, "bench/model", "main", [])

            def run_peer(r=r) -> None:
                snapshot_download(
                    "bench/model", cache_dir=tmp / f"peer{r}", endpoint=hub.url, token=False
                )

            order = [(ours, run_ours), (peer, run_peer)]
            for sink, fn in order if r % 2 == 0 else order[::-1]:
                sink.append(nbytes / timed(fn) / MB)
            shutil.rmtree(tmp / f"ours{r}")
            shutil.rmtree(tmp / f"peer{r}")
    finally:
        hub.stop()
    return figures("hub (download + sha256 manifest)", ours, "snapshot_download", peer)


# --------------------------------------------------------------------------------- sftp


def connector(sshd: Sshd, tmp: Path, name: str) -> SSHConnector:
    known = sshd.write_known_hosts(tmp / "known_hosts")
    address = SSHAddress("127.0.0.1", sshd.port, "root", (str(sshd.client_key),))
    return SSHConnector(name, address, known_hosts=str(known), retries=0)


def scp(sshd: Sshd, tmp: Path, files: list[Path], dst: Path) -> None:
    known = sshd.write_known_hosts(tmp / "known_hosts")
    subprocess.run(
        [
            "scp", "-q", "-P", str(sshd.port), "-i", str(sshd.client_key),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            *map(str, files), f"root@127.0.0.1:{dst}/",
        ],
        check=True, timeout=600,
    )  # fmt: skip


def sftp_copy(target: SSHEndpoint, files: list[Path], dst: Path, in_flight: int) -> None:
    pairs = [Copy(str(f), str(dst / f.name), f.stat().st_size) for f in files]
    asyncio.run(
        copy_files(
            pairs,
            LocalEndpoint(),
            target,
            in_flight=in_flight,
            timeout=60,
            progress=lambda n: None,
        )
    )


def bench_sftp(sshd: Sshd, tmp: Path, nbytes: int, rounds: int) -> list[dict]:
    one = [make_file(tmp / "src1" / "w.safetensors", nbytes)]
    four = [make_file(tmp / "src4" / f"w{i}.safetensors", nbytes // 4) for i in range(4)]
    target = SSHEndpoint(connector(sshd, tmp, "node"))
    out = []
    for label, files, in_flight in (("1 file", one, 1), ("4 files, 4 in flight", four, 4)):
        ours, peer = [], []
        for r in range(rounds):
            dst_ours, dst_peer = tmp / f"o{r}", tmp / f"p{r}"
            dst_ours.mkdir()
            dst_peer.mkdir()
            order = [
                (ours, partial(sftp_copy, target, files, dst_ours, in_flight)),
                (peer, partial(scp, sshd, tmp, files, dst_peer)),
            ]
            for sink, fn in order if r % 2 == 0 else order[::-1]:
                sink.append(nbytes / timed(fn) / MB)
            shutil.rmtree(dst_ours)
            shutil.rmtree(dst_peer)
        out.append(figures(f"sftp ({label})", ours, "scp", peer))
    close_connections()
    return out


# -------------------------------------------------------------------------------- share


def pair_group(sshd: Sshd, tmp: Path):
    """n0 here, n1 through the sshd: one 2-rank ring group, every rank on loopback."""
    from supervisor.config.load import load_hostfile

    tmp.mkdir(parents=True, exist_ok=True)
    config = sshd.write_ssh_config(tmp / "ssh_config", "benchmac")
    known = sshd.write_known_hosts(tmp / "known_hosts")
    remote = {"ssh": "benchmac", "ips": ["127.0.0.1"], "python": sys.executable}
    doc = {
        "model": "demo:tiny",
        "hosts": [
            {"ssh": "localhost", "name": "n0", "ips": ["127.0.0.1"]},
            {**remote, "name": "n1", "workdir": str(ROOT)},
        ],
        "ssh": {"known_hosts": str(known), "config": str(config)},
    }
    (tmp / "pair.json").write_text(json.dumps(doc))
    spec = load_hostfile(tmp / "pair.json")
    return spec, spec.groups[0]


def share_once(spec, group, src: Path, dst: Path, own: list[float]) -> None:
    """One share; ``own`` gets the ranks' own MB/s (joined to last write: no spawn, no end)."""
    from structlog.testing import capture_logs

    from supervisor.models.share_path import ShareFile, share_over_group

    files = [ShareFile(src.stat().st_size, {"n0": str(src), "n1": str(dst)})]
    with capture_logs() as logs:
        asyncio.run(
            share_over_group(spec, group, "n0", files, deadline=300, progress=lambda n: None)
        )
    own += [e["mb_per_s"] for e in logs if e.get("event") == "model_share_done"]


def bench_share(sshd: Sshd, tmp: Path, nbytes: int, rounds: int) -> list[dict]:
    spec, group = pair_group(sshd, tmp)
    src = make_file(tmp / "share-src" / "w.safetensors", nbytes)
    target = SSHEndpoint(connector(sshd, tmp, "node"))
    ours, peer, own = [], [], []
    for r in range(rounds):
        dst = tmp / f"share{r}"
        dst.mkdir()
        order = [
            (ours, partial(share_once, spec, group, src, dst / "a", own)),
            (peer, partial(sftp_copy, target, [src], dst, 1)),
        ]
        for sink, fn in order if r % 2 == 0 else order[::-1]:
            sink.append(nbytes / timed(fn) / MB)
        shutil.rmtree(dst)
    close_connections()
    return [
        figures("mx.distributed (ring, 2 ranks)", ours, "our sftp", peer),
        figures("mx.distributed, ranks' own time", own, "our sftp", peer),
    ]


def figures(path: str, ours: list[float], peer_name: str, peer: list[float]) -> dict:
    o, p = statistics.median(ours), statistics.median(peer)
    return {"path": path, "ours_mb_s": round(o, 1), "peer": peer_name, "peer_mb_s": round(p, 1),
            "ratio": round(o / p, 2), "rounds": len(ours)}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ops/bench models", description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="bytes moved per round, in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(PATHS))
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet: figures only
    only = set(args.only.split(","))
    if only - set(PATHS):
        parser.error(f"--only: expected some of {','.join(PATHS)}")
    nbytes = args.mb * MB
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp_name:
        tmp = Path(tmp_name)
        if "hub" in only:
            results.append(bench_hub(tmp / "hub", nbytes, args.rounds))
        if only & {"sftp", "share"}:
            (tmp / "sshd").mkdir()
            with running_sshd(tmp / "sshd") as sshd:
                if "sftp" in only:
                    results += bench_sftp(sshd, tmp / "sftp", nbytes, args.rounds)
                if "share" in only:
                    results += bench_share(sshd, tmp / "share", nbytes, args.rounds)
    for r in results:
        print(f"{r['path']:<36} ours {r['ours_mb_s']:>8.1f} MB/s   {r['peer']:<18} "
              f"{r['peer_mb_s']:>8.1f} MB/s   ratio {r['ratio']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
