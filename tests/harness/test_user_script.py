"""Every virtual user of a scenario shares one default Expectations and ChatOptions (built once, not per user),
and a copy of the scenario with other settings gets its own."""
from __future__ import annotations

from harness.profiles import load_profile
from harness.scenario import Scenario


def _scenario(**extra) -> Scenario:
    return Scenario.model_validate({"name": "s", "users": 3, "chats_per_user": 2, "message": "hi", **extra})


def test_users_share_the_default_chat_and_a_copy_with_other_settings_does_not():
    netra = load_profile("netra")
    sc = _scenario(expect={"settle": "50ms"})
    a, b = sc.user_script(netra).chat(), sc.user_script(netra).chat()
    assert a.expectations is b.expectations and a.options is b.options
    assert a.options.settle == 0.05 and a.options.overlap_settle

    longer = sc.model_copy(update={"expect": sc.expect.model_copy(update={"settle": 0.5}), "think_time": None})
    c = longer.user_script(netra).chat()
    assert c.options is not a.options and c.options.settle == 0.5
    assert sc.user_script(netra).chat().options is a.options  # the original keeps its own

    other = load_profile("ag-ui")
    d = sc.user_script(other).chat()
    assert d.expectations is not a.expectations and d.expectations.required != a.expectations.required


def test_a_copy_of_a_copy_made_after_the_original_is_freed_builds_its_own():
    # A copy carries its original's cache; keyed by the original's id, a copy of that copy allocated where the freed
    # original was (CPython reuses the address at once) took the original's options as its own.
    netra = load_profile("netra")
    for _ in range(20):
        a = _scenario(expect={"settle": "50ms"})
        a.user_script(netra)
        b = a.model_copy(update={"expect": a.expect.model_copy(update={"settle": 0.5})})
        del a
        c = b.model_copy(update={"reconnect": False})
        options = c.user_script(netra).chat().options
        assert options.reconnect is False and options.settle == 0.5


def test_a_forked_process_draws_its_own_think_times():
    # locust --processes forks after the locustfile (and this module) loaded: every user's think times now come from
    # one module-level generator, which a child must not share with its parent (the same pauses in every process).
    import os

    netra = load_profile("netra")
    script = _scenario(think_time={"min": "1s", "max": "2s"}).user_script(netra)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next few draws, then gone without running the parent's cleanup
        try:
            os.write(write, repr([script.pause(None) for _ in range(4)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read()
    os.waitpid(pid, 0)
    parent = repr([script.pause(None) for _ in range(4)])
    assert child and child != parent


def test_scenarios_compare_by_their_settings_once_their_users_shared_the_default_chat():
    # The cache is no part of a scenario: pydantic's == compares private attributes (a cache holding the scenario
    # recursed without end, one holding its id made equal scenarios unequal).
    netra = load_profile("netra")
    a = _scenario()
    b, c = a.model_copy(), _scenario()
    a.user_script(netra), b.user_script(netra), c.user_script(netra)
    assert a == b == c
    assert a != _scenario(reconnect=False)
