"""ChatTracker's own shallow copy (a provisional verdict is judged on one while the chat listens on): the same as
copy.copy's generic one, slot for slot, and judging it leaves the chat unjudged."""
from __future__ import annotations

import copy

from harness.checker import ChatTracker
from harness.events import Outcome, Role

from .runs import EXP, ev, valid_run


def _fed() -> ChatTracker:
    chat = ChatTracker("c1", EXP, 0.0, scenario="s", thread_id="t1", message_id="m1")
    for e in valid_run()[:-1]:
        chat.feed(e)
    chat.feed(ev(Role.TOOL_EXECUTING, 99, 5.0, call="open"))  # a gap in the seqs, a span left open
    chat.reconnected(resumed=True)
    return chat


def test_copy_is_the_generic_shallow_copy_slot_for_slot() -> None:
    chat = _fed()
    mine = copy.copy(chat)
    # What copy.copy did before ChatTracker had __copy__: the reduce protocol's copy of every set slot.
    _, _, state = object.__reduce_ex__(chat, 4)[:3]
    generic = ChatTracker.__new__(ChatTracker)
    for name, value in state[1].items():
        setattr(generic, name, value)
    assert mine is not chat and type(mine) is ChatTracker
    assert set(state[1]) == set(ChatTracker.__slots__)  # every slot is set by __init__, so every slot is copied
    for name in ChatTracker.__slots__:
        assert getattr(mine, name) is getattr(chat, name) is getattr(generic, name), name


def test_judging_the_copy_leaves_the_chat_open() -> None:
    chat = _fed()
    provisional = copy.copy(chat).finish(10.0)
    assert provisional.outcome is Outcome.INCOMPLETE and not chat.judged
    chat.feed(ev(Role.AGENT_COMPLETED, 100, 6.0))
    assert chat.finish(10.0).outcome is Outcome.FAILED and chat.judged
