"""Can a group split its model? Pure checks, the supervisor's pre-start check, and the ranks'."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from actors.models.resolve import resolve_model
from actors.protocol.messages import ActorConfig
from actors.protocol.sharding import ModelShape, model_facts, sharding_problem
from supervisor.config.groups import GroupConfigError, validate_groups
from supervisor.config.load import parse_hostfile
from supervisor.control.server import ControlServer
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared
from supervisor.supervision.child import ChildSpec, Timeouts
from supervisor.supervision.policy import SupervisorFlags
from supervisor.supervision.spawner import LocalSpawner
from supervisor.supervision.supervisor import ChildSupervisor

QWEN_7B = ModelShape("qwen2", True, True, layers=28, attention_heads=28, kv_heads=4,
                     intermediate_size=18944)  # fmt: skip
LLAMA_70B = ModelShape("llama", True, True, layers=80, attention_heads=64, kv_heads=8,
                       intermediate_size=28672)  # fmt: skip
TINY = ModelShape("qwen2", True, True, layers=2, attention_heads=4, kv_heads=2,
                  intermediate_size=192)  # fmt: skip
NO_PIPELINE = ModelShape("gemma", True, False, layers=18, attention_heads=8, kv_heads=4)
NO_SHARD = ModelShape("mamba", False, False, layers=24, attention_heads=0, kv_heads=0)


@pytest.mark.parametrize(
    "facts, parallel, size",
    [
        (LLAMA_70B, "tensor", 1),
        (LLAMA_70B, "tensor", 2),
        (LLAMA_70B, "tensor", 4),
        (LLAMA_70B, "tensor", 8),
        (QWEN_7B, "tensor", 2),
        (QWEN_7B, "tensor", 4),
        (QWEN_7B, "pipeline", 3),
        (TINY, "tensor", 2),
        (TINY, "pipeline", 2),
        (NO_SHARD, "tensor", 1),  # one rank splits nothing
    ],
)
def test_splits_that_work_have_no_problem(facts, parallel, size):
    assert sharding_problem("g", "m", parallel, size, facts) == ""


@pytest.mark.parametrize(
    "facts, parallel, size, message",
    [
        (
            TINY,
            "tensor",
            3,
            'group "main": demo:tiny has 2 key/value heads; a tensor-parallel group of 3 '
            "cannot split them; use 1 or 2 hosts",
        ),
        (
            LLAMA_70B,
            "tensor",
            3,
            'group "main": demo:tiny has 8 key/value heads; a tensor-parallel group of 3 '
            'cannot split them; use 1, 2, 4 or 8 hosts, or "parallel": "pipeline"',
        ),
        (
            QWEN_7B,
            "tensor",
            8,
            'group "main": demo:tiny has 4 key/value heads; a tensor-parallel group of 8 '
            'cannot split them; use 1, 2 or 4 hosts, or "parallel": "pipeline"',
        ),
        (
            ModelShape("x", True, True, layers=4, attention_heads=6, kv_heads=2),
            "tensor",
            2,
            "",
        ),
        (
            ModelShape("x", True, False, layers=4, attention_heads=6, kv_heads=6),
            "tensor",
            4,
            'group "main": demo:tiny has 6 key/value heads; a tensor-parallel group of 4 '
            "cannot split them; use 1, 2, 3 or 6 hosts",
        ),
        (
            ModelShape(
                "x", True, False, layers=4, attention_heads=8, kv_heads=8, intermediate_size=300
            ),  # fmt: skip
            "tensor",
            8,
            'group "main": demo:tiny has 300 MLP channels; a tensor-parallel group of 8 '
            "cannot split them; use 1, 2 or 4 hosts",
        ),
        (
            TINY,
            "pipeline",
            3,
            'group "main": demo:tiny has 2 layers; a pipeline group of 3 needs at least one '
            "per rank; use at most 2 hosts",
        ),
        (
            NO_PIPELINE,
            "pipeline",
            2,
            'group "main": demo:tiny (gemma) cannot be split into pipeline stages: '
            'mlx_lm\'s model has no pipeline(); use "parallel": "tensor"',
        ),
        (
            NO_SHARD,
            "tensor",
            2,
            'group "main": demo:tiny (mamba) cannot be split tensor-parallel: mlx_lm\'s model '
            "has no shard(); serve it on one host",
        ),
        (
            ModelShape("y", False, True, layers=8, attention_heads=8, kv_heads=8),
            "tensor",
            2,
            'group "main": demo:tiny (y) cannot be split tensor-parallel: mlx_lm\'s model has '
            'no shard(); use "parallel": "pipeline"',
        ),
    ],
)
def test_splits_that_cannot_work_say_what_would(facts, parallel, size, message):
    assert sharding_problem("main", "demo:tiny", parallel, size, facts) == message


def test_demo_model_facts_come_from_mlx_lm_and_config():
    facts = model_facts(resolve_model("demo:tiny"))
    assert facts == TINY


def cluster(hosts: int, **extra):
    document = {"hosts": [{"ssh": "localhost", "name": f"n{i}"} for i in range(hosts)], **extra}
    return parse_hostfile(json.dumps(document).encode(), "h.json")


def test_supervisor_checks_every_multi_host_group_it_can_see():
    seen: list[str] = []

    def locate(model: str) -> Path | None:
        seen.append(model)
        return None if model == "org/remote-only" else Path("/models") / model

    spec = cluster(
        3,
        groups=[
            {"name": "solo", "hosts": [0], "model": "org/one"},
            {"name": "far", "hosts": [0, 1, 2], "model": "org/remote-only"},
            {"name": "pair", "hosts": [1, 2], "model": "org/tiny"},
            {"name": "trio", "hosts": [0, 1, 2], "model": "org/tiny"},
        ],
    )
    with pytest.raises(GroupConfigError) as info:
        validate_groups(spec, locate=locate, facts_of=lambda path: TINY)
    assert str(info.value).startswith('group "trio": org/tiny has 2 key/value heads')
    assert seen == ["org/remote-only", "org/tiny"]  # one-host groups need no check; once each


def test_supervisor_check_reads_the_real_demo_model():
    validate_groups(cluster(2))  # demo:tiny splits in two
    with pytest.raises(GroupConfigError) as info:
        validate_groups(cluster(3, parallel="pipeline"))
    assert "has 2 layers; a pipeline group of 3" in str(info.value)


def test_a_model_that_cannot_be_inspected_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no_such_architecture"}')
    spec = cluster(2, model=str(tmp_path))
    with pytest.raises(GroupConfigError) as info:
        validate_groups(spec)
    message = str(info.value)
    assert "no_such_architecture not supported" in message and "\n" not in message


@pytest.mark.e2e  # starts real processes without a fixture
async def test_ranks_refuse_a_split_permanently_and_the_group_fails_without_restart():
    """The ranks' own check: what the supervisor could not see (a model only nodes have)."""
    control = ControlServer("t", heartbeat_interval=0.2)
    _, port = await control.start()
    state = ClusterState()
    state.apply(GroupDeclared("main", "demo:tiny", ["local"] * 3, "tensor", "ring"))
    spawner = LocalSpawner()
    children = [
        ChildSpec(
            ActorConfig(
                actor_id=f"main.rank{rank}",
                kind="generation",
                node="local",
                control_host="127.0.0.1",
                control_port=port,
                rank=rank,
                world_size=3,
                group="main",
                model="demo:tiny",
            ),
            spawner,
        )
        for rank in range(3)
    ]
    sup = ChildSupervisor(
        "main",
        children,
        control=control,
        state=state,
        token="t",
        flags=SupervisorFlags("one_for_all", backoff_initial=0.01),
        timeouts=Timeouts(),
        group="main",
    )
    task = asyncio.create_task(sup.run())
    pids: set[int] = set()
    try:
        await asyncio.wait_for(task, 60)  # run() returns once the group is given up
        pids = {a.pid for a in state.actors.values() if a.pid}
        group = state.groups["main"]
        assert group.state == "failed" and group.restarts == 0
        assert group.reason == (
            'group "main": demo:tiny has 2 key/value heads; a tensor-parallel group of 3 '
            "cannot split them; use 1 or 2 hosts"
        )
        assert "main.rank2" not in state.actors  # the last rank never started
    finally:
        if not task.done():
            await sup.stop(grace=1.0)
        await control.close()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
