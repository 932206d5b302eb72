"""The supervision tree with real actor processes (memory actors: cheap, real, same runtime)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import psutil
import pytest

from actors.protocol.messages import ActorConfig, Hello, Refused, Shutdown
from actors.protocol.transport import read_message, write_message
from supervisor.config.spec import RestartType
from supervisor.control.server import ControlServer
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared
from supervisor.supervision.child import ChildSpec, Timeouts
from supervisor.supervision.policy import SupervisorFlags
from supervisor.supervision.spawner import ActorLaunch, LocalSpawner, actor_environment
from supervisor.supervision.supervisor import ChildSupervisor
from tests.conftest import until

TOKEN = "test-token"


class Tree:
    """A control server and a one_for_all supervisor over ``n`` memory actors."""

    def __init__(
        self,
        n: int = 1,
        flags: SupervisorFlags | None = None,
        heartbeat: float = 3.0,
        restart: RestartType = "permanent",
    ):
        self.n = n
        self.flags = flags or SupervisorFlags("one_for_all", backoff_initial=0.05, backoff_max=0.2)
        self.restart = restart
        self.gave_up: list[str] = []
        self.state = ClusterState()
        self.heartbeat = heartbeat
        self.pids: set[int] = set()

    async def __aenter__(self):
        self.control = ControlServer(TOKEN, heartbeat_interval=0.2)
        _, port = await self.control.start()
        spawner = LocalSpawner()
        children = [
            ChildSpec(
                ActorConfig(
                    actor_id=f"g.rank{r}",
                    kind="memory",
                    node="local",
                    control_host="127.0.0.1",
                    control_port=port,
                    rank=r,
                ),
                spawner,
                restart=self.restart,
            )
            for r in range(self.n)
        ]
        self.state.apply(GroupDeclared("g", "none", ["local"], "tensor", "ring"))
        self.sup = ChildSupervisor(
            "g",
            children,
            control=self.control,
            state=self.state,
            token=TOKEN,
            flags=self.flags,
            timeouts=Timeouts(heartbeat=self.heartbeat),
            group="g",
        )
        self.sup.on_give_up = self.gave_up.append
        self.task = asyncio.create_task(self.sup.run())
        return self

    async def __aexit__(self, *exc):
        await self.sup.stop(grace=2.0)
        await asyncio.wait_for(self.task, 10)
        await self.control.close()
        for pid in self.pids:  # every process the test saw is ended by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def actor_pids(self) -> list[int | None]:
        pids = [self.state.actors[f"g.rank{r}"].pid for r in range(self.n)]
        self.pids.update(p for p in pids if p)
        return pids

    async def ready(self, timeout: float = 20.0):
        ready = await self.state.wait_for(lambda: self.sup.leader is not None, timeout)
        assert ready, f"group g not ready within {timeout} s"
        return self.actor_pids()


async def test_children_start_and_report_heartbeats():
    async with Tree(n=2) as tree:
        pids = await tree.ready()
        assert all(pids) and len(set(pids)) == 2
        await until(
            lambda: all(tree.state.actors[f"g.rank{r}"].vitals.mem_total > 0 for r in range(2)),
            5,
            "heartbeat vitals",
        )
        assert tree.state.groups["g"].state == "ready"


async def test_kill_9_of_one_child_restarts_all_children_one_for_all():
    async with Tree(n=2) as tree:
        before = await tree.ready()
        os.kill(before[1], signal.SIGKILL)
        await until(lambda: tree.state.groups["g"].restarts == 1, 10, "a group restart")
        after = await tree.ready()
        assert set(after).isdisjoint(before), "every rank must be a new process"
        assert not psutil.pid_exists(before[0]) or psutil.Process(before[0]).status() == "zombie"
        assert tree.state.actors["g.rank0"].restarts == 1
        # The errors log: the death names the actor, the sibling's kill and the restart follow.
        errors = [(e.kind, e.actor, e.group) for e in reversed(tree.state.errors())]
        assert errors == [
            ("actor_exited", "g.rank1", "g"),
            ("actor_killed", "g.rank0", "g"),
            ("restart", None, "g"),
        ], errors
        assert tree.state.errors()[-1].message == "exit code -9"
        assert tree.state.metrics.restarts == {("memory", "g"): 2}


async def test_sigstop_is_detected_by_heartbeat_silence():
    async with Tree(n=1, heartbeat=1.0) as tree:
        (pid,) = await tree.ready()
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        await until(lambda: tree.state.groups["g"].restarts == 1, 10, "restart after silence")
        detected = time.monotonic() - stopped_at
        (new_pid,) = await tree.ready()
        assert new_pid != pid
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        lost = [e for e in tree.state.errors() if e.kind == "heartbeat_lost"]
        assert lost and "heartbeat silent" in lost[0].message and lost[0].actor == "g.rank0"
        assert 1.0 <= detected < 5.0


async def test_restart_intensity_exceeded_marks_group_failed():
    flags = SupervisorFlags("one_for_all", 2, 60, backoff_initial=0.01, backoff_max=0.02)
    async with Tree(n=1, flags=flags) as tree:
        for _ in range(3):
            (pid,) = await tree.ready()
            os.kill(pid, signal.SIGKILL)
            await until(
                lambda p=pid: tree.state.actors["g.rank0"].pid != p or tree.sup.failed,
                10,
                "the next incarnation or failure",
            )
        await asyncio.wait_for(tree.task, 10)
        assert tree.sup.failed
        group = tree.state.groups["g"]
        assert group.state == "failed"
        assert "exceeds intensity 2" in group.reason
        assert tree.state.actors["g.rank0"].state == "failed"
        assert tree.state.health()[1]["status"] == "failed"
        assert tree.gave_up == [group.reason]  # escalated once, with the reason


@pytest.mark.e2e
async def test_a_temporary_set_stays_down_after_kill_9():
    async with Tree(n=2, restart="temporary") as tree:
        before = await tree.ready()
        os.kill(before[0], signal.SIGKILL)
        await asyncio.wait_for(tree.task, 10)  # run() returned: nothing will restart it
        group = tree.state.groups["g"]
        assert (group.state, group.restarts) == ("stopped", 0)
        assert group.reason.startswith("g.rank0 ")  # exited, or its connection lost first
        assert not tree.sup.failed and tree.gave_up == []  # left, not failed: no escalation
        assert [tree.state.actors[f"g.rank{r}"].pid for r in range(2)] == before
        assert not psutil.pid_exists(before[1]) or psutil.Process(before[1]).status() == "zombie"


@pytest.mark.e2e
async def test_a_transient_set_is_restarted_after_kill_9():
    async with Tree(n=1, restart="transient") as tree:
        (pid,) = await tree.ready()
        os.kill(pid, signal.SIGKILL)  # an abnormal exit
        await until(lambda: tree.state.groups["g"].restarts == 1, 10, "a restart")
        (new_pid,) = await tree.ready()
        assert new_pid != pid


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("restart", "restarted"), [("transient", False), ("permanent", True), ("temporary", False)]
)
async def test_a_normal_exit_restarts_only_a_permanent_set(restart, restarted):
    async with Tree(n=1, restart=restart) as tree:
        (pid,) = await tree.ready()
        await tree.sup.handle("g.rank0").tell(Shutdown(reason="done"))  # the actor exits 0
        if restarted:
            await until(lambda: tree.state.groups["g"].restarts == 1, 10, "a restart")
            (new_pid,) = await tree.ready()
            assert new_pid != pid
        else:
            await asyncio.wait_for(tree.task, 10)  # run() returned: nothing will restart it
            group = tree.state.groups["g"]
            assert (group.state, group.restarts) == ("stopped", 0)
            assert group.reason == "g.rank0 exited with code 0"  # not "connection lost"
        assert tree.gave_up == []


async def test_one_for_one_gives_each_child_its_own_supervisor():
    control = ControlServer(TOKEN)
    config = ActorConfig(actor_id="a", kind="memory", node="n", control_host="h", control_port=1)
    two = [ChildSpec(config, LocalSpawner()), ChildSpec(config, LocalSpawner())]
    with pytest.raises(ValueError, match="one_for_one supervises one child"):
        ChildSupervisor(
            "nodes",
            two,
            control=control,
            state=ClusterState(),
            token=TOKEN,
            flags=SupervisorFlags("one_for_one"),
            timeouts=Timeouts(),
        )


async def test_wrong_token_is_refused_and_the_actor_exits():
    control = ControlServer(TOKEN)
    _, port = await control.start()
    try:
        control.expect("x.memory")
        cfg = ActorConfig(
            actor_id="x.memory",
            kind="memory",
            node="local",
            control_host="127.0.0.1",
            control_port=port,
        )
        env = actor_environment(ActorLaunch(cfg, token="not-the-token"), dict(os.environ))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "actors", "memory", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 3
        assert b"actor_refused" in err and b"wrong cluster token" in err
        assert control.refused == 1
    finally:
        await control.close()


async def test_unexpected_actor_id_is_refused():
    control = ControlServer(TOKEN)
    host, port = await control.start()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        write_message(
            writer, Hello(actor_id="stranger", kind="memory", node="n", pid=1, token=TOKEN)
        )
        reply = await asyncio.wait_for(read_message(reader), 5)
        assert isinstance(reply, Refused) and "unexpected actor id" in reply.reason
        writer.close()
    finally:
        await control.close()


async def test_stop_ends_every_child():
    tree = Tree(n=2)
    async with tree:
        pids = await tree.ready()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert {a.state for a in tree.state.actors.values()} == {"stopped"}
