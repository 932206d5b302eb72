"""Inbox.take: who joins the batch, who is dropped or cancelled, and how room is counted."""

from __future__ import annotations

from actors.generation.engine.inbox import Inbox, Prompted, StepPlan
from actors.protocol.messages import GenerationRequest


def prompted(rid: str) -> Prompted:
    return Prompted(GenerationRequest(request_id=rid, model="m", prompt="x"), [1, 2])


def ids(requests: list[Prompted]) -> list[str]:
    return [r.request_id for r in requests]


def inbox_of(*rids: str) -> Inbox:
    inbox = Inbox()
    for rid in rids:
        assert inbox.put(prompted(rid))
    return inbox


def test_take_admits_in_arrival_order_up_to_the_room_and_keeps_the_rest_queued():
    inbox = inbox_of("a", "b", "c")
    plan = inbox.take(room=2, running=set())
    assert ids(plan.admit) == ["a", "b"]
    assert len(inbox) == 1
    assert ids(inbox.take(room=5, running=set()).admit) == ["c"]


def test_no_room_admits_nobody_and_loses_nobody():
    inbox = inbox_of("a")
    plan = inbox.take(room=0, running=set())
    assert plan.admit == [] and not plan
    assert len(inbox) == 1 and inbox.pending()


def test_a_request_cancelled_while_queued_is_dropped_not_admitted():
    inbox = inbox_of("a", "b")
    inbox.cancel("a")
    plan = inbox.take(room=5, running=set())
    assert ids(plan.drop) == ["a"] and ids(plan.admit) == ["b"]
    assert plan.cancel == []  # it never ran: nothing to end in the batch
    assert len(inbox) == 0


def test_a_running_request_cancelled_is_named_for_the_batch_to_end():
    inbox = Inbox()
    inbox.cancel("r")
    plan = inbox.take(room=1, running={"r", "s"})
    assert plan.cancel == ["r"] and plan.drop == [] and plan.admit == []
    assert plan  # something for the ranks to agree on


def test_a_running_request_cancelled_here_frees_its_slot_in_the_same_take():
    inbox = inbox_of("a", "b")
    inbox.cancel("r")
    plan = inbox.take(room=1, running={"r"})
    assert plan.cancel == ["r"]
    assert ids(plan.admit) == ["a", "b"]


def test_a_cancel_for_an_unknown_id_is_forgotten_after_one_take():
    inbox = Inbox()
    inbox.cancel("ghost")
    assert inbox.pending()
    plan = inbox.take(room=1, running={"r"})
    assert not plan and plan.cancel == [] and plan.drop == []
    assert not inbox.pending()
    inbox.put(prompted("ghost"))  # the same id queued later is not cancelled by the old ask
    assert ids(inbox.take(room=1, running=set()).admit) == ["ghost"]


def test_cancels_apply_once():
    inbox = Inbox()
    inbox.cancel("r")
    assert inbox.take(room=1, running={"r"}).cancel == ["r"]
    assert inbox.take(room=1, running={"r"}).cancel == []


def test_a_cancel_and_a_put_before_one_take_drop_the_request():
    inbox = Inbox()
    inbox.cancel("a")  # the caller gave up before the engine looked
    inbox.put(prompted("a"))
    plan = inbox.take(room=1, running=set())
    assert ids(plan.drop) == ["a"] and plan.admit == []


def test_every_queued_copy_of_a_cancelled_id_is_dropped_and_others_keep_their_order():
    inbox = inbox_of("a", "x", "b", "x", "c")
    inbox.cancel("x")
    plan = inbox.take(room=2, running=set())
    assert ids(plan.drop) == ["x", "x"]
    assert ids(plan.admit) == ["a", "b"]
    assert ids(inbox.take(room=2, running=set()).admit) == ["c"]


def test_put_and_cancel_wake_the_engine_thread():
    inbox = Inbox()
    assert not inbox.wakeup.is_set()
    inbox.put(prompted("a"))
    assert inbox.wakeup.is_set()
    inbox.wakeup.clear()
    inbox.cancel("a")
    assert inbox.wakeup.is_set()


def test_close_returns_what_was_queued_and_refuses_later_puts():
    inbox = inbox_of("a", "b")
    assert ids(inbox.close()) == ["a", "b"]
    assert not inbox.put(prompted("c"))
    assert len(inbox) == 0
    assert inbox.take(room=5, running=set()).admit == []


def test_a_step_plan_is_true_when_any_part_has_something():
    assert not StepPlan()
    assert StepPlan(admit=[prompted("a")])
    assert StepPlan(drop=[prompted("a")])
    assert StepPlan(cancel=["a"])
    assert StepPlan(retire=[3])
    assert StepPlan(evict=[9])
