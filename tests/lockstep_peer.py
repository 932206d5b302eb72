"""One rank of a two-rank ring group exercising ``Lockstep``; run by tests/test_lockstep.py.

Prints one JSON line per shared plan it saw, then how it ended. ``scenario``:
``share`` (rank 0 sends a plan, nothing, a plan, then stops the group) or ``lost``
(rank 1 dies after the first plan; rank 0 must see the group fail, not hang).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from actors.generation.engine.inbox import Prompted
from actors.generation.engine.lockstep import (
    GroupFailure,
    GroupStopped,
    Lockstep,
    SharedPlan,
    join_group,
)
from actors.protocol.messages import GenerationRequest, SamplingParams
from actors.protocol.rank_env import pin_to_cpu

PLANS = [
    SharedPlan(
        admit=[
            Prompted(
                GenerationRequest(
                    request_id="r1", model="m", prompt="hi", sampling=SamplingParams(seed=7)
                ),
                prompt=[1, 2, 3],  # rank 0's rendering travels with the request
                checkpoints=[(2, "system")],  # and where prefill stores the cache
            )
        ],
        cancel=["r0"],
        retire=[3, 4],
        evict=[9],  # prompt cache entries rank 0 evicted
    ),
    None,
    SharedPlan(cancel=["r1"]),
]


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main(scenario: str) -> int:
    pin_to_cpu(os.environ)
    lockstep = Lockstep(join_group(2), idle_tick=0.01)
    leader = lockstep.leader
    try:
        for i, plan in enumerate(PLANS):
            lockstep.pace(busy=False, wakeup=threading.Event())
            got = lockstep.share(plan if leader else None)
            say(step=i, plan=None if got is None else json.loads(_json(got)))
            if scenario == "lost" and not leader:
                os._exit(9)  # a rank dies mid-conversation
        if leader:
            lockstep.stop()
            say(end="stopped the group")
        else:
            lockstep.share(None)
            say(end="no stop came")
    except GroupStopped:
        say(end="stopped by rank 0")
    except GroupFailure as error:
        say(end="group failed", error=str(error))
    return 0


def _json(plan: SharedPlan) -> bytes:
    import msgspec

    return msgspec.json.encode(plan)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
