"""Lockstep between two real ring ranks on loopback, started as the supervisor starts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from supervisor.config.spec import GroupSpec, HostSpec
from supervisor.supervision.ranks import free_starting_port, rank_environments
from tests.conftest import ROOT

PEER = str(ROOT / "tests" / "lockstep_peer.py")


def run_pair(scenario: str) -> list[list[dict]]:
    """Both ranks of a ring group (rank 1 started last), each pinned to its own core."""
    group = GroupSpec(
        name="g", model="m", hosts=(HostSpec(ssh="localhost"), HostSpec(ssh="localhost"))
    )
    envs = rank_environments(group, free_starting_port(2))
    procs = []
    try:
        for rank, env in enumerate(envs):
            procs.append(
                subprocess.Popen(
                    [sys.executable, PEER, scenario],
                    env={**os.environ, **env, "MLXS_CPU": str(rank), "PYTHONPATH": str(ROOT)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = []
    for stdout, stderr in outputs:
        parsed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert parsed, stderr
        lines.append(parsed)
    return lines


@pytest.mark.e2e  # starts real processes without a fixture
def test_followers_receive_exactly_what_rank_0_shares_and_stop_when_told():
    leader, follower = run_pair("share")
    assert [line.get("plan") for line in follower[:3]] == [line.get("plan") for line in leader[:3]]
    first = follower[0]["plan"]
    assert first["admit"][0]["request"]["request_id"] == "r1"
    assert first["admit"][0]["request"]["sampling"]["seed"] == 7
    assert first["admit"][0]["prompt"] == [1, 2, 3]  # followers never render a prompt
    assert first["cancel"] == ["r0"] and first["retire"] == [3, 4]
    assert first["admit"][0]["checkpoints"] == [[2, "system"]] and first["evict"] == [9]
    assert follower[1]["plan"] is None  # nothing new: one tiny collective, no payload
    assert follower[2]["plan"] == {"cancel": ["r1"]}
    assert leader[-1] == {"end": "stopped the group"}
    assert follower[-1] == {"end": "stopped by rank 0"}


@pytest.mark.e2e  # starts real processes without a fixture
def test_a_rank_that_dies_fails_the_group_on_its_peer_instead_of_hanging():
    leader, follower = run_pair("lost")
    assert follower == [{"step": 0, "plan": leader[0]["plan"]}]
    end = leader[-1]
    assert end["end"] == "group failed"
    assert "peer" in end["error"] or "connection" in end["error"]


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (0.7, 5)])
def test_requests_that_already_sample_alike_keep_their_sampling(temperature, seed):
    from actors.generation.engine.inbox import Prompted
    from actors.generation.engine.lockstep import with_shared_seed
    from actors.protocol.messages import GenerationRequest, SamplingParams

    request = GenerationRequest(
        request_id="r", model="m", prompt="x", sampling=SamplingParams(temperature, seed=seed)
    )
    prompted = Prompted(request, [1])
    assert with_shared_seed(prompted) is prompted


def test_temperature_without_a_seed_gets_one_that_every_rank_shares():
    from actors.generation.engine.inbox import Prompted
    from actors.generation.engine.lockstep import with_shared_seed
    from actors.protocol.messages import GenerationRequest, SamplingParams

    request = GenerationRequest(
        request_id="r", model="m", prompt="x", sampling=SamplingParams(temperature=0.8)
    )
    seeded = with_shared_seed(Prompted(request, [1, 2]))
    sampling = seeded.request.sampling
    assert sampling.seed is not None and 0 <= sampling.seed < 2**63
    assert sampling.temperature == 0.8 and seeded.request_id == "r"
    assert seeded.prompt == [1, 2]
