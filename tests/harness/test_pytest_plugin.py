"""The pytest plugin's `chatprobe` fixture, as a user's own tests would use it (embedded agentsim)."""
from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from harness.events import Outcome, Role


def test_fixture_chat_passes_and_reports_timings(chatprobe):
    result = chatprobe.check(chatprobe.chat("What is 6 * 7?", streaming=True))
    assert result.outcome is Outcome.PASSED
    assert result.event_delays[Role.AGENT_STARTED] <= result.event_delays[Role.AGENT_COMPLETED]
    assert result.run_id


def test_fixture_check_explains_a_failure(chatprobe):
    result = chatprobe.chat("Compute 1 + 1. #fail-agent")
    assert result.outcome is Outcome.FAILED
    with pytest.raises(AssertionError, match="R13"):
        chatprobe.check(result)


def test_fixture_expected_error_passes(chatprobe):
    chatprobe.check(chatprobe.chat("Compute 1 + 1. #fail-agent", expect_error="fatal"))
    chatprobe.check(chatprobe.chat("What time is it?"))  # the connection is still usable


def test_fixture_follow_up_goes_on_with_the_thread(chatprobe):
    first = chatprobe.check(chatprobe.chat("What is 6 * 7?"))
    again = chatprobe.check(chatprobe.chat("And times 2?", follow_up=True))
    fresh = chatprobe.check(chatprobe.chat("Something else"))
    assert first.thread_id and again.thread_id == first.thread_id  # the server was asked on the same thread
    assert fresh.thread_id not in (None, first.thread_id)


def test_fixture_follow_up_needs_an_earlier_chat(chatprobe):
    with pytest.raises(ValueError, match="send one first"):
        chatprobe.chat("And times 2?", follow_up=True)


def test_plugin_in_a_users_own_test_files_chats_and_checks_recordings(pytester, tmp_path):
    """A user's own test files, run by a pytest of their own (one run for both files: a pytest process and its
    imports are most of the cost): chats on the embedded agentsim, a required role missing fails its test; and a
    team whose tests already save recordings: `chatprobe.check_recording(path)` judges them with the same rules."""
    from harness.cli import main

    rec = tmp_path / "rec"
    assert main(["run", "basic", "--record", str(rec), "-q"]) == 0
    bad = tmp_path / "bad"
    assert main(["run", "basic", "--sim-fault", "drop:tool_completed=1.0", "--record", str(bad), "-q"]) == 1
    pytester.makepyfile(
        test_chats="""
        def test_mine(chatprobe):
            chatprobe.check(chatprobe.chat("Look up the capital of France."))

        def test_broken(chatprobe):
            chatprobe.check(chatprobe.chat("Look up the capital of France.", required=["agent_started", "error_event"]))
        """,
        test_recordings=f"""
        def test_good(chatprobe):
            assert chatprobe.check_recording({str(rec)!r}).stats.chats == 1

        def test_bad(chatprobe):
            chatprobe.check_recording({str(bad)!r}, "basic")
        """,
    )
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    res.assert_outcomes(passed=2, failed=2)
    # Which tests passed and failed, by name (the counts alone could be the other two).
    res.stdout.fnmatch_lines(["*PASSED test_chats.py::test_mine*", "*PASSED test_recordings.py::test_good*"])
    res.stdout.fnmatch_lines(["*FAILED test_chats.py::test_broken*", "*FAILED test_recordings.py::test_bad*"])
    res.stdout.fnmatch_lines(["*R2 required: missing error_event*"])
    res.stdout.fnmatch_lines(["*objectives not met*", "*R2 required: missing tool_completed*"])


def test_profile_option_without_a_target_speaks_that_profile_to_the_embedded_agentsim(pytester):
    """`--chatprobe-profile ag-ui` with no `--chatprobe-target` started agentsim speaking netra anyway: the AG-UI
    chat got no event and waited out its deadline (75 s with the defaults), then failed. Now the embedded agentsim
    speaks the profile, as `chatprobe run --profile ag-ui` has it; one it cannot speak fails each test that asks for
    the fixture with one line saying so (not at start-up: a conftest pytest loads while collecting may name a server
    of its own, test_a_conftest_points_the_fixture_at_the_server_it_starts_with_chatprobe_url)."""
    pytester.makepyfile(
        test_agui="""
        def test_agui_chat(chatprobe):
            result = chatprobe.check(chatprobe.chat("What is 17 * 23?", streaming=True, deadline=10))
            assert result.time_to_first_event < 2.0
        """,
    )
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--chatprobe-profile", "ag-ui", timeout=60)
    res.assert_outcomes(passed=1)
    other = Path(__file__).parents[2] / "docs" / "profiles" / "openai-responses.yaml"
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-profile", str(other), timeout=60)
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*--chatprobe-profile openai-responses: the embedded agentsim speaks ag-ui, netra*"
                                  "--chatprobe-target*"])
    assert "Traceback" not in refused.stdout.str()


def test_a_misspelt_chatprobe_option_is_one_usage_line_naming_the_option_meant(pytester):
    """FAILED on the old code: pytest said "unrecognized arguments: --chatprobe-targt" in its usage block, with no
    word of --chatprobe-target. Now it is pytest's usage error (exit 4, before any test runs), one line naming the
    option meant, as `chatprobe run` names a misspelt flag; an option of another plugin's (a conftest's) that looks
    like one of ours is that plugin's, and a mistake that is not ours stays pytest's to report."""
    pytester.makeconftest("""
        def pytest_addoption(parser):
            parser.addoption("--chatprobe-targets", default=None)
        """)
    pytester.makepyfile(test_x="def test_x(request):\n    assert request.config.getoption('--chatprobe-targets')\n")
    for argv, meant in [(["--chatprobe-targt", "ws://127.0.0.1:1/ws"], "--chatprobe-targt (did you mean "
                                                                       "--chatprobe-target?)"),
                        (["--chatprob-token-env=X"], "--chatprob-token-env (did you mean --chatprobe-token-env?)")]:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", *argv, timeout=60)
        assert res.ret == 4, res.stderr.str()
        errors = [line for line in res.stderr.lines if line.startswith("ERROR")]
        assert errors == [f"ERROR: chatprobe: unrecognized option {meant}"], res.stderr.str()
    ok = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-targets=x", timeout=60)
    ok.assert_outcomes(passed=1)
    other = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-targt", "x", "--maxfail=many",
                                          timeout=60)
    assert other.ret == 4 and "argument --maxfail: invalid int value: 'many'" in other.stderr.str()


def test_another_users_event_after_the_last_chat_fails_the_test_that_used_the_connection(pytester):
    """A server that sends another user's event after a test's last chat was judged (here: as the fixture closes the
    connection, before answering its close), with no chat after it: the connection's own R8
    (FrameRouter.connection_ended). FAILED on the old code: the fixture's client reported it to a sink that ignored
    it, and the test passed. Now the test that used the connection fails, naming the rule and the reason; a test on a
    clean connection of the same server passes."""
    import json

    from tests.integration.outside_servers import InThread, RawWsServer, leaks_at_close

    foreign = {"type": "partial_result", "run_id": "run-of-someone-else", "thread_id": "t-x", "user_id": "u-other",
               "seq": 1, "payload": {"content": "someone else's words"}}
    pytester.makepyfile(test_leak="""
        def test_leaked_to(chatprobe):
            chatprobe.check(chatprobe.chat("leak", deadline=5))

        def test_clean(chatprobe):
            chatprobe.check(chatprobe.chat("hi", deadline=5))

        def test_failing_of_its_own(chatprobe):
            chatprobe.check(chatprobe.chat("leak", deadline=5))
            assert 1 == 2, "the test's own failure"
        """)
    with InThread(RawWsServer(leaks_at_close(json.dumps(foreign), after="leak"))) as server:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--chatprobe-target", server.url,
                                            timeout=60)
    res.assert_outcomes(passed=1, failed=2)
    res.stdout.fnmatch_lines(["*PASSED test_leak.py::test_clean*"])
    res.stdout.fnmatch_lines(["*FAILED test_leak.py::test_leaked_to - Failed: chatprobe: the connection's own*"])
    res.stdout.fnmatch_lines(["*FAILED test_leak.py::test_failing_of_its_own - AssertionError: the test's own*"])
    # The reason, once for each failing test: the test's own failure keeps it, with the connection's as a note.
    # (Counted before the short summary, whose lines pytest shortens or not by the environment: whole under CI.)
    out = res.stdout.str().partition("short test summary info")[0]
    assert out.count("the connection's own violations, after its last chat") == 2, out
    assert out.count("R8 isolation: received partial_result of a run this client did not start") == 2, out


def test_a_token_the_server_echoes_is_in_no_failure_pytest_shows_nor_in_its_junit_xml(pytester, tmp_path, monkeypatch):
    """A server that refuses every message with an error_message quoting the client's token back (a common "invalid
    token: …" answer). FAILED on the old code: `chatprobe.check(result)` raised with the server's words as they came,
    and `assert chatprobe.chat(...).passed` showed the ChatResult's repr (its `error`) under -vv: the token in
    pytest's output and in --junitxml's failure message and text. Now what pytest reports for a test that used the
    fixture is scrubbed as chatprobe's own reports are; the failure still says what the server answered."""
    from tests.integration.outside_servers import InThread, RawWsServer, WsConn

    token = "plugin-Tok3n-that-must-stay-home-7f3a9c"

    async def echoes_the_token(conn: WsConn) -> None:
        await conn.send({"type": "connection_established", "data": {"connection_id": "c"}})
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            await conn.send({"type": "error_message", "error_code": "INVALID_MESSAGE",
                             "error_message": f"invalid token: Bearer {token}",
                             "message_id": msg.get("payload", {}).get("message_id")})

    pytester.makepyfile(test_echo="""
        def test_checked(chatprobe):
            chatprobe.check(chatprobe.chat("hi", deadline=5))

        def test_asserted(chatprobe):
            assert chatprobe.chat("hi", deadline=5).passed
        """)
    junit = tmp_path / "junit.xml"
    monkeypatch.setenv("CHATPROBE_TOKEN", token)
    with InThread(RawWsServer(echoes_the_token)) as server:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-vv", "-rA", "--showlocals",
                                            "--chatprobe-target", server.url, f"--junitxml={junit}", timeout=60)
    res.assert_outcomes(failed=2)
    out, xml = res.stdout.str() + res.stderr.str(), junit.read_text()
    assert "INVALID_MESSAGE invalid token" in out and "INVALID_MESSAGE invalid token" in xml  # still said
    assert token not in out and token[:20] not in out, out
    assert token not in xml and token[:20] not in xml, xml


def test_the_fixture_leaves_no_event_loop_or_socket_open_under_filterwarnings_error(pytester):
    """A project whose pytest turns warnings into errors (`filterwarnings = error`, common in strict suites).
    FAILED on the old code: each test's client loop was stopped and never closed, so the garbage collector found an
    "unclosed event loop" and its two self-pipe sockets per test (ResourceWarnings), which pytest raised at the end
    of the run (exit 1, a traceback of unraisable exceptions) or in whichever later test the collector ran."""
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n    ignore::pytest.PytestDeprecationWarning\n")
    pytester.makepyfile(test_strict="""
        import gc

        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_chat(chatprobe, n):
            chatprobe.check(chatprobe.chat(f"What is {n} * 7?", deadline=10))

        def test_after(chatprobe):
            gc.collect()  # what the earlier tests left behind is found here, if anything
        """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=60)
    out = res.stdout.str() + res.stderr.str()
    assert "unclosed" not in out, out
    res.assert_outcomes(passed=4)
    assert res.ret == 0, out


async def test_the_plugin_takes_auth_ca_file_and_subprotocols_as_the_other_drivers_do(pytester, tmp_path, monkeypatch):
    """A team's own chat server behind TLS of a private CA, that takes the token only as the browser's subprotocol
    pair and upgrades only an offer of its own subprotocol `agent.v1` (else HTTP 400). `chatprobe run`, `monitor` and
    Locust reach it (`--auth subprotocol`, `--ca-file`, `--subprotocol`); FAILED on the old code: the plugin had no
    such options (pytest's usage error, exit 4). Now `--chatprobe-auth`, `--chatprobe-ca-file` and
    `--chatprobe-subprotocol` are taken as those; a chat offered without the subprotocol fails, with the server's
    400."""
    import base64
    import re

    from tests.integration.hostile_ws import frame, raw, run_frames, tls_context, upgrade, welcome_and_message

    token = "plugin-subproto-T0ken-stays-home-91b2"
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")

    async def agent_v1_only(reader, writer, head, srv):
        offered = [p.strip() for p in b"".join(re.findall(rb"(?im)^sec-websocket-protocol:(.*)\r$", head))
                   .decode().split(",") if p.strip()]
        if "agent.v1" not in offered or f"jwt.{encoded}" not in offered:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(upgrade(head, b"Sec-WebSocket-Protocol: agent.v1\r\n"))
        message_id = await welcome_and_message(reader, writer)
        writer.writelines(frame(1, f) for f in run_frames(message_id))
        await writer.drain()
        while await reader.read(65536):
            pass

    context, ca_file = tls_context(tmp_path)
    monkeypatch.setenv("CHATPROBE_TOKEN", token)
    pytester.makepyfile(test_tls="def test_chat(chatprobe):\n    chatprobe.check(chatprobe.chat('hi', deadline=10))\n")
    async with raw(agent_v1_only, tls=context) as srv:
        flags = ["-p", "no:cacheprovider", "-rA", "--chatprobe-target", srv.url, "--chatprobe-ca-file", ca_file,
                 "--chatprobe-auth", "subprotocol"]
        res = await asyncio.to_thread(pytester.runpytest_subprocess, *flags, "--chatprobe-subprotocol", "agent.v1",
                                      "--chatprobe-subprotocol", "agent.v0", timeout=60)
        refused = await asyncio.to_thread(pytester.runpytest_subprocess, *flags, timeout=60)
    res.assert_outcomes(passed=1)
    offered = [h for h in srv.requests[0].decode().split("\r\n") if h.lower().startswith("sec-websocket-protocol")]
    assert offered == [f"Sec-WebSocket-Protocol: agent.v1, agent.v0, jwt-auth, jwt.{encoded}"], srv.requests[0]
    assert b"authorization" not in srv.requests[0].lower()
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*chat error: HTTP 400 at the WebSocket handshake*"])
    assert token not in res.stdout.str() + refused.stdout.str()


@pytest.mark.parametrize("flags,said", [
    (["--chatprobe-subprotocol", "agent v1"], "--chatprobe-subprotocol 'agent v1': not a subprotocol name"),
    (["--chatprobe-auth", "subprotocol", "--chatprobe-subprotocol", "jwt-auth"],
     "--chatprobe-subprotocol 'jwt-auth': the token's subprotocols (jwt-auth, jwt.<token>) are offered by "
     "--chatprobe-auth subprotocol, with the token from --chatprobe-token-env, --chatprobe-token-file or "
     "--chatprobe-jwt-secret-env"),
    (["--chatprobe-jwt-secret-env", "NO_SUCH_VAR_X"], "--chatprobe-jwt-secret-env NO_SUCH_VAR_X: the variable is not "
                                                      "set or empty"),
    (["--chatprobe-target", "wss://127.0.0.1:9/ws", "--chatprobe-ca-file", "no-such-ca.pem"],
     "--chatprobe-ca-file no-such-ca.pem: no such file"),
    # A TLS option beside a ws:// target, which speaks no TLS: refused, not ignored (it was: the run went on
    # unverified while the user believed the certificate checked).
    (["--chatprobe-ca-file", "ca.pem"], "--chatprobe-ca-file: is for a wss:// or https:// target; "
                                        "ws://127.0.0.1:9/ws speaks no TLS (did you mean wss://?)"),
    (["--chatprobe-client-cert", "me.pem"], "--chatprobe-client-cert: is for a wss:// or https:// target; "
                                            "ws://127.0.0.1:9/ws speaks no TLS (did you mean wss://?)"),
    (["--chatprobe-token-file", "no-such-token"], "--chatprobe-token-file no-such-token: cannot read"),
    (["--chatprobe-header", "Authorization: Basic x"],
     "--chatprobe-header 'Authorization: ...': chatprobe sends its token in this header (or, with --chatprobe-auth "
     "subprotocol, as a subprotocol); for a bearer token use --chatprobe-token-env or --chatprobe-token-file, or "
     "give --chatprobe-auth none to send an Authorization of your own"),
])
def test_a_bad_target_option_is_one_usage_line_naming_the_plugins_own_flags(pytester, flags, said):
    """Each message names the options as the plugin spells them, its hints too (the old code named `run`'s `--auth`
    and `--token-file`, flags pytest does not have, and had none of these options: exit 4, unrecognized)."""
    pytester.makepyfile(test_x="def test_x(chatprobe):\n    pass\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-target", "ws://127.0.0.1:9/ws",
                                        *flags, timeout=60)
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stderr.str()
    errors = [line for line in res.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: chatprobe: {said}"), res.stderr.str()


def test_a_failed_chat_says_its_rules_first_and_an_assert_on_passed_shows_the_violations(pytester):
    """What a developer reads when a chat fails. FAILED on the old code: `check()` raised "chat failed: " (nothing
    after the colon when the server gave no reason), so pytest's short summary named no rule, and the traceback went
    on into the plugin's own frame (its locals: the ChatResult's repr); `assert chatprobe.chat(...).passed` showed
    only that repr, cut short before its violations. Now the first line names the rules, the traceback ends at the
    test's line, and a failed test lists its chats that did not pass (those no `check()` told already) beside
    the failure."""
    pytester.makepyfile(test_fail="""
        def test_checked(chatprobe):
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))
            chatprobe.check(chatprobe.chat("Compute 1 + 1. #fail-agent", deadline=10))

        def test_asserted(chatprobe):
            assert chatprobe.chat("What is 6 * 7?", deadline=10).passed
            assert chatprobe.chat("Compute 1 + 1. #fail-agent", deadline=10).passed
        """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=60)
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*FAILED test_fail.py::test_checked - AssertionError: chat failed: R13 *"])
    res.stdout.fnmatch_lines(["E * chat failed: R13 *", "E * R13 *"])
    out = res.stdout.str()
    assert "pytest_plugin.py" not in out, out  # the plugin's frame is not part of the user's traceback
    assert out.count("chatprobe: chats that did not pass") == 1, out  # test_asserted's: test_checked said it
    res.stdout.fnmatch_lines(["*- chatprobe: chats that did not pass -*", "chat #2 of this test failed: R13 *",
                              "  R13 *"])


def test_an_async_test_awaits_its_chat_while_its_own_loop_serves(pytester):
    """An async project's conftest runs its chat server on the test's own event loop (an async fixture, a
    `websockets` server), as pytest-asyncio has fixtures. `chatprobe.chat()` blocks that loop until the verdict,
    so the server never answered the upgrade: the chat failed "timed out while connecting" (10 s) and the test with
    it. FAILED on the old code: there was no way to wait for a chat without blocking (no `achat`). Now `await
    chatprobe.achat(...)` frees the loop while the chat plays; a conversation's next turn too; in strict mode and in
    auto mode alike."""
    pytester.makeconftest("""
        import json

        import pytest_asyncio
        from websockets.asyncio.server import serve

        async def netra(ws):
            await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c"}}))
            async for raw in ws:
                p = json.loads(raw)["payload"]
                run = "r-" + p["message_id"]
                for seq, kind in enumerate(("agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                            "agent_completed"), 1):
                    await ws.send(json.dumps({"type": kind, "run_id": run, "thread_id": p.get("thread_id"), "seq": seq,
                                              "payload": {"message_id": p["message_id"], "tool_name": "t",
                                                          "tool_call_id": "c1", "result": "ok"}}))

        @pytest_asyncio.fixture
        async def chatprobe_target():
            from harness.targets import TargetOptions, TokenProvider, make_target

            async with serve(netra, "127.0.0.1", 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                yield make_target(TargetOptions(url=f"ws://127.0.0.1:{port}/ws"), TokenProvider())
        """)
    pytester.makepyfile(test_async="""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.parametrize("n", [1, 2])
        async def test_turns(chatprobe, n):
            first = chatprobe.check(await chatprobe.achat("hi", deadline=5, first_event_limit=5))
            for _ in range(n):
                again = chatprobe.check(await chatprobe.achat("and?", deadline=5, follow_up=True))
                assert again.thread_id == first.thread_id
        """)
    for mode in ("strict", "auto"):
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-o", f"asyncio_mode={mode}",
                                            "-o", "asyncio_default_fixture_loop_scope=function", timeout=60)
        res.assert_outcomes(passed=2)


@pytest.mark.parametrize(("profile", "folder"), [("built-in", ""), ("the team's own", ""),
                                               ("the team's own", "team")])
def test_a_conftest_points_the_fixture_at_the_server_it_starts_with_chatprobe_url(pytester, monkeypatch, profile,
                                                                                  folder):
    """A team's conftest starts its own chat server (a session fixture, on a free port) and overrides the
    `chatprobe_url` fixture to return its address; the --chatprobe-* options (the token from CHATPROBE_TOKEN, a header
    of their own, a profile of their own dialect) apply to it. FAILED on the old code: there was no such fixture, and
    the fixture went on talking to the embedded agentsim (the team's server saw no connection), unless the conftest
    rebuilt the Target itself from chatprobe's internals, without the options; then a profile of the team's own was
    refused at start-up, checked against the embedded agentsim ("the embedded agentsim speaks ag-ui, netra"), also
    when the conftest is one pytest loads only while collecting (a test folder's own)."""
    token = "team-server-T0ken-stays-home-5d21"
    monkeypatch.setenv("TEAM_TOKEN", token)
    (pytester.path / folder).mkdir(exist_ok=True)
    (pytester.path / folder / "conftest.py").write_text(textwrap.dedent("""
        import json
        import threading

        import pytest
        from websockets.sync.server import serve

        @pytest.fixture(scope="session")
        def team_server():
            seen = []

            def netra(ws):
                seen.append((ws.request.headers.get("Authorization"), ws.request.headers.get("X-Team")))
                ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c"}}))
                for raw in ws:
                    p = json.loads(raw)["payload"]
                    for seq, kind in enumerate(("agent_started", "agent_thinking", "tool_executing",
                                                "tool_completed", "agent_completed"), 1):
                        ws.send(json.dumps({"type": kind, "run_id": "r-" + p["message_id"], "seq": seq,
                                            "payload": {"message_id": p["message_id"], "tool_name": "t",
                                                        "tool_call_id": "c1", "result": "from the team's server"}}))

            server = serve(netra, "127.0.0.1", 0)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            yield server, seen
            server.shutdown()
            thread.join(10)

        @pytest.fixture(scope="session")
        def chatprobe_url(team_server):
            server, _ = team_server
            return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
        """))
    (pytester.path / folder / "test_team.py").write_text(textwrap.dedent("""
        import os

        def test_reaches_the_teams_server(chatprobe, team_server):
            chatprobe.check(chatprobe.chat("hi", deadline=10))
            assert team_server[1] == [("Bearer " + os.environ["TEAM_TOKEN"], "blue")]
        """))
    own = []
    if profile != "built-in":  # the netra dialect under a name of the team's: no dialect the embedded agentsim speaks
        netra = (Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml").read_text()
        (pytester.path / "team.yaml").write_text(netra.replace("name: netra", "name: team-dialect", 1))
        own = ["--chatprobe-profile", str(pytester.path / "team.yaml")]
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--chatprobe-token-env", "TEAM_TOKEN",
                                        "--chatprobe-header", "X-Team: blue", *own, timeout=60)
    res.assert_outcomes(passed=1)
    assert token not in res.stdout.str()


def test_a_malformed_scenario_or_recording_given_to_check_recording_is_one_message_at_the_tests_line(pytester,
                                                                                                     monkeypatch):
    """A team's browser test judges the HAR it saved against a scenario file of its own. FAILED on the old code: a
    scenario file with a misspelt field, or a file that is no recording, failed the test with a traceback through
    chatprobe's loaders (offline.py, scenario.py, yamlfile.py, recordings.py) down to the frame that raised, the
    message at the very end; and a scenario given as a Path (pytest's tmp_path / "x.yaml") ended in AttributeError:
    'PosixPath' object has no attribute 'model_copy'. Now the message, naming the file, line and field, is raised
    at the test's own line, and a Path is read as its str is."""
    pytester.makefile(".yaml", checkout="name: checkout\nusers: 1\nmessage: hi\nexpect:\n  streamng: true\n")
    pytester.makefile(".har", session='{"log": {"version": "1.2", "entries": []}}')
    pytester.makefile(".txt", notes="these are my notes\n")
    pytester.makepyfile(test_rec="""
        from pathlib import Path

        def test_str_scenario(chatprobe):
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))
            chatprobe.check_recording("session.har", "checkout.yaml")

        def test_path_scenario(chatprobe):
            chatprobe.check_recording("session.har", Path("checkout.yaml"))

        def test_not_a_recording(chatprobe):
            chatprobe.check_recording("notes.txt")
        """)
    monkeypatch.setenv("COLUMNS", "400")  # the short summary's lines whole
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=60)
    res.assert_outcomes(failed=3)
    out = res.stdout.str()
    for test in ("test_str_scenario", "test_path_scenario"):
        res.stdout.fnmatch_lines([f"FAILED test_rec.py::{test} - harness.errors.ConfigError: checkout.yaml:5: field "
                                  "'expect.streamng': *"])
    res.stdout.fnmatch_lines(["FAILED test_rec.py::test_not_a_recording - harness.recordings.RecordingError: "
                              "notes.txt:1: *"])
    for module in ("offline.py", "scenario.py", "yamlfile.py", "recordings.py", "pytest_plugin.py"):
        assert module not in out, out  # the traceback ends at the test's own line
    assert "AttributeError" not in out and "During handling" not in out, out


def test_the_chats_that_did_not_pass_are_in_the_junit_xml_failure_and_shown_whatever_show_capture_says(pytester,
                                                                                                     tmp_path):
    """A team's CI reads the JUnit XML; its tests assert on `.passed`, parametrized over messages, with
    `--show-capture=no` (their own captured output is noise in CI). FAILED on the old code: the verdicts
    of the chats that did not pass were a report section of their own, which pytest's --junitxml never writes (it
    keeps only the captured output's sections) and --show-capture=no left off the terminal: the XML's failure said
    `assert False` and the ChatResult's repr cut short before its violations, no rule named. Now they are a section
    of the failure itself, in the XML's failure text and on the terminal alike (through xdist's workers too:
    test_installed_package.py's team project)."""
    pytester.makepyfile(test_ci="""
        import pytest

        @pytest.mark.parametrize("message", ["What is 6 * 7?", "Compute 1 + 1. #fail-agent"])
        def test_asserted(chatprobe, message):
            print("the team's own", "output")
            assert chatprobe.chat(message, deadline=10).passed
        """)
    junit = tmp_path / "junit.xml"
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--show-capture=no",
                                        f"--junitxml={junit}", timeout=90)
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*- chatprobe: chats that did not pass -*", "chat #1 of this test failed: R13 *",
                              "  R13 error handling: *#fail-agent*"])
    assert "the team's own output" not in res.stdout.str()  # --show-capture=no holds for the team's output
    failures = ElementTree.parse(junit).getroot().findall(".//testcase/failure")
    assert len(failures) == 1, ElementTree.tostring(ElementTree.parse(junit).getroot(), encoding="unicode")
    text = failures[0].text or ""
    assert "chat #1 of this test failed: R13 error handling" in text and "#fail-agent" in text, text


def _team_logged_chat(pytester, tmp_path, key: str, secret: str) -> tuple[str, str]:
    """A team's test chatting with an AG-UI agentsim whose URL carries `key` in its query, logging at INFO to the
    live log and a log file: (what pytest printed, the log file)."""
    from agentsim.agui import AguiSim
    from agentsim.server import SimConfig, run_in_thread

    pytester.makepyfile(test_logged="""
        import logging

        def test_chat(chatprobe):
            logging.getLogger("team").info("the team's own line")
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))
        """)
    log_file = tmp_path / "run.log"
    handle = run_in_thread(server=AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002,
                                                    tool_latency=0.001, protocol="ag-ui")))
    try:
        res = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "--chatprobe-target", f"{handle.url}?api_key={key}",
            "--chatprobe-profile", "ag-ui", "-o", "log_cli=true", "--log-cli-level=INFO", "--log-level=INFO",
            f"--log-file={log_file}", "--log-file-level=INFO", timeout=60)
    finally:
        handle.stop()
    res.assert_outcomes(passed=1)
    return res.stdout.str() + res.stderr.str(), log_file.read_text()


def test_a_credential_in_the_targets_query_is_in_no_live_log_or_log_file_line(pytester, tmp_path, monkeypatch):
    """A team's AG-UI server takes its API key in the URL's query (`--chatprobe-target http://…/agent?api_key=…`), and
    its pytest runs at log level INFO with live logging and a log file, as a team debugging its CI has it. FAILED on
    the old code: httpx's "HTTP Request: POST http://…/agent?api_key=… "HTTP/1.1 200 OK"" line, one a chat, went
    to the terminal (live log) and the log file with the key as it was; only the captured-log section of a failed
    test's report was scrubbed. Now the fixture's own request lines are scrubbed as its reports are."""

    key = "team-Api-K3y-that-stays-home-51c0e2"
    secret = "team-jwt-secret-0123456789abcdef01234567"
    monkeypatch.setenv("CHATPROBE_JWT_SECRET", secret)
    out, logged = _team_logged_chat(pytester, tmp_path, key, secret)
    for text in (out, logged):
        assert "the team's own line" in text and "HTTP Request: POST" in text, text  # the lines are there
        assert key not in text and "api_key=[REDACTED]" in text, text


def test_a_mistaken_chat_argument_is_one_value_error_naming_it_at_the_tests_line(pytester, monkeypatch):
    """A team's tests pass chat() what a scenario step takes, some of it mistaken. FAILED on the old code: a role
    misspelt, a deadline of 0, a negative limit were pydantic's ValidationError ("1 validation error for Expect", its
    URL) under the plugin's frames; `options=ChatOptions(disconnect_after="2")` a TypeError from deep in the chat's
    flow on the client's thread; `deadline="5s"` (a duration a scenario takes) a TypeError that left the chat's
    coroutine never awaited (a RuntimeWarning, an error under -W error); `expect_error="Fatal"` was taken, the
    chat then passing with any error; and `chatprobe.check(chatprobe.achat(...))`, the await forgotten, was an
    AttributeError ('coroutine' object has no attribute 'outcome') and the coroutine never awaited. Now each is a
    ValueError at the test's line naming the argument, the value and why (the forgotten await a TypeError saying
    so); "5s" is five seconds, and the client goes on chatting."""
    pytester.makepyfile(test_args="""
        import pytest
        from harness.flow import ChatOptions

        @pytest.mark.parametrize("kwargs", [
            {"required": ["agent_started", "agent_finished"]},
            {"deadline": 0},
            {"first_event_limit": -1},
            {"expect_error": "Fatal"},
            {"options": ChatOptions(disconnect_after="2")},
        ], ids=["role", "deadline", "limit", "expect_error", "options"])
        def test_mistaken(chatprobe, kwargs):
            chatprobe.chat("What is 6 * 7?", **kwargs)

        @pytest.mark.asyncio
        async def test_awaited(chatprobe):
            await chatprobe.achat("What is 6 * 7?", stall_limit="soon")

        @pytest.mark.asyncio
        async def test_not_awaited(chatprobe):
            chatprobe.check(chatprobe.achat("What is 6 * 7?"))

        def test_then_chats(chatprobe):
            with pytest.raises(ValueError):
                chatprobe.chat("What is 6 * 7?", deadline=0)
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline="5s", options=ChatOptions(settle="50ms")))
        """)
    monkeypatch.setenv("COLUMNS", "400")  # the short summary's lines whole
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-W", "error::RuntimeWarning", timeout=60)
    res.assert_outcomes(failed=7, passed=1)
    said = {"role": "required[1]='agent_finished': Input should be 'agent_started', *",
            "deadline": "deadline=0: must be more than 0 *",
            "limit": "first_event_limit=-1: a duration cannot be negative",
            "expect_error": "expect_error='Fatal': Input should be 'recoverable', 'fatal' or 'invalid_input'",
            "options": "options.disconnect_after='2': Input should be a valid integer"}
    for test, why in said.items():
        line = f"FAILED test_args.py::test_mistaken[{test}] - ValueError: chatprobe.chat(): {why}"
        res.stdout.fnmatch_lines([line.replace("[", "[[]")])  # (a [ of fnmatch's own is a character class)
    res.stdout.fnmatch_lines(["FAILED test_args.py::test_awaited - ValueError: chatprobe.achat(): stall_limit='soon': *"])
    res.stdout.fnmatch_lines(["FAILED test_args.py::test_not_awaited - TypeError: chatprobe.check() takes a chat's "
                              "verdict, not a coroutine: chatprobe.check(await chatprobe.achat(...))"])
    out = res.stdout.str() + res.stderr.str()
    for noise in ("pytest_plugin.py", "flow.py", "pydantic", "validation error for", "never awaited"):
        assert noise not in out, out


def test_a_server_that_is_not_running_fails_each_test_at_once_saying_refused_and_where(pytester, refused_port,
                                                                                     monkeypatch):
    """The team's AG-UI server is not up (a port where every connection is refused; its key in the URL's query).
    FAILED on the old code: the failure said "chat error: network error: All connection attempts failed" (httpx's
    words for a refused connection, where a WebSocket target says "connection refused") and no address, so a team
    whose conftest or addopts picks the server could not tell which one was down. Now it says refused and where,
    without the key, for a check() and beside an assert on `.passed` alike, within seconds."""
    key = "team-Api-K3y-that-stays-home-9e4b7a"
    url = f"http://127.0.0.1:{refused_port()}/agent?api_key={key}"
    pytester.makepyfile(test_down="""
        def test_checked(chatprobe):
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))

        def test_asserted(chatprobe):
            assert chatprobe.chat("What is 6 * 7?", deadline=10).passed
        """)
    monkeypatch.setenv("COLUMNS", "400")  # the short summary's lines whole
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--chatprobe-target", url,
                                        "--chatprobe-profile", "ag-ui", "--chatprobe-auth", "none", timeout=60)
    res.assert_outcomes(failed=2)
    shown = url.replace(key, "[REDACTED]").replace("[", "[[]")  # (a [ of fnmatch's own is a character class)
    res.stdout.fnmatch_lines([f"FAILED test_down.py::test_checked - AssertionError: chat error: connection refused, "
                              f"at {shown}"])
    res.stdout.fnmatch_lines([f"chat #1 of this test error: connection refused, at {shown}"])
    out = res.stdout.str()
    assert key not in out and "All connection attempts failed" not in out, out


def test_a_credential_the_server_echoes_in_a_response_header_is_in_no_debug_live_log_or_log_file_line(pytester,
                                                                                                       tmp_path):
    """A team's pytest at log level DEBUG (live log and a log file): httpcore, under httpx, logs each response's
    headers ("receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'', [(b'X-Api-Key', b'…')])"), and
    a server that echoes the team's credential header back (or sets a session cookie of it) had it there. FAILED on
    the old code: the filter was on the "httpcore" logger, whose records are none (httpcore logs on its modules'
    loggers, "httpcore.http11" and others, and a logger's filter is not asked for its children's records): the key
    went out as it was. The team's own DEBUG lines are still there, and so are httpcore's."""
    from tests.integration.outside_servers import InThread, RawSseServer

    key = "hdr-Api-K3y-echoed-back-0c4d7e1f"

    async def answer(request: dict) -> AsyncIterator[bytes]:
        t, r = request["threadId"], request["runId"]
        for frame in ({"type": "RUN_STARTED", "threadId": t, "runId": r},
                      {"type": "TEXT_MESSAGE_START", "messageId": "m", "role": "assistant"},
                      {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "42"},
                      {"type": "TEXT_MESSAGE_END", "messageId": "m"},
                      {"type": "RUN_FINISHED", "threadId": t, "runId": r}):
            yield b"data: " + json.dumps(frame).encode() + b"\n\n"

    def echoed(headers: dict[str, str]) -> bytes:
        return f"X-Echoed-Api-Key: {headers.get('x-api-key', '')}\r\n".encode("latin-1")

    pytester.makepyfile(test_logged="""
        import logging

        def test_chat(chatprobe):
            logging.getLogger("team").debug("the team's own debug line")
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))
        """)
    log_file = tmp_path / "run.log"
    with InThread(RawSseServer(answer, headers=echoed)) as server:
        res = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "--chatprobe-target", server.url, "--chatprobe-profile", "ag-ui",
            "--chatprobe-auth", "none", "--chatprobe-header", f"X-Api-Key: {key}", "-o", "log_cli=true",
            "--log-cli-level=DEBUG", "--log-level=DEBUG", f"--log-file={log_file}", "--log-file-level=DEBUG",
            timeout=60)
    res.assert_outcomes(passed=1)
    out, logged = res.stdout.str() + res.stderr.str(), log_file.read_text()
    for text in (out, logged):
        assert "the team's own debug line" in text and "receive_response_headers.complete" in text, text
        assert key not in text and key[:16] not in text and "[REDACTED]" in text, text


def test_the_fixtures_request_lines_are_scrubbed_when_the_team_turns_off_logging_thread_names(pytester, tmp_path,
                                                                                              monkeypatch):
    """A team's conftest sets `logging.logThreads = False` (the logging cookbook's advice for a faster logger): each
    record's threadName is None then. FAILED on the old code: the filter told the fixture's own records by the
    record's threadName, so none was scrubbed and httpx's INFO line showed the query's key in the live log and the
    log file. Now it asks the thread that logs (the filter runs on it), which logging.logThreads does not change."""

    key = "team-Api-K3y-no-thread-names-8d2b4f"
    secret = "team-jwt-secret-0123456789abcdef01234567"
    monkeypatch.setenv("CHATPROBE_JWT_SECRET", secret)
    pytester.makeconftest("import logging\n\nlogging.logThreads = False\n")
    out, logged = _team_logged_chat(pytester, tmp_path, key, secret)
    for text in (out, logged):
        assert "the team's own line" in text and "HTTP Request: POST" in text, text
        assert key not in text and "api_key=[REDACTED]" in text, text


def test_the_websockets_clients_debug_lines_of_the_upgrade_show_no_credential(pytester, tmp_path):
    """An install without picows (the lean client is optional) carries the fixture's chats on the websockets client,
    which logs the upgrade request's every header at DEBUG ("> X-Api-Key: …"). FAILED on the old code: the filter was
    on httpx's loggers only, and a team's DEBUG live log and log file showed the header's key as it was."""
    key = "hdr-Api-K3y-upgrade-header-5e9a21c7"
    pytester.makeconftest("import sys\n\nsys.modules['picows'] = None  # as if not installed\n")
    pytester.makepyfile(test_logged="""
        def test_chat(chatprobe):
            chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline=10))
        """)
    log_file = tmp_path / "run.log"
    res = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rA", "--chatprobe-header", f"X-Api-Key: {key}", "-o", "log_cli=true",
        "--log-cli-level=DEBUG", "--log-level=DEBUG", f"--log-file={log_file}", "--log-file-level=DEBUG", timeout=60)
    res.assert_outcomes(passed=1)
    out, logged = res.stdout.str() + res.stderr.str(), log_file.read_text()
    for text in (out, logged):
        assert "websockets.client" in text and "> GET " in text, text  # the websockets client's lines are there
        assert key not in text and key[:16] not in text, text


def test_a_reconnect_bound_that_is_no_bound_is_one_value_error_naming_it(pytester, monkeypatch):
    """chat()'s `options` carry the reconnect bounds a scenario's top-level keys set (max_reconnect_attempts,
    reconnect_timeout), which a scenario file refuses out of range (exit 2). FAILED on the old code: the plugin
    checked neither, so `ChatOptions(max_reconnect_attempts=0)` or `reconnect_timeout=-1` was taken (a chat whose
    connection is lost then tries once, its attempt given no time), and `reconnect_timeout="5s"` (a duration as a
    scenario writes it) a TypeError from deep in the chat's flow on the client's thread at the first lost
    connection. Now each mistake is a ValueError at the test's line naming the argument, and "5s" is five seconds:
    the chat dropped after two events reconnects, resumes and passes."""
    pytester.makepyfile(test_bounds="""
        import pytest
        from harness.flow import ChatOptions

        @pytest.mark.parametrize("kwargs", [
            {"max_reconnect_attempts": 0},
            {"max_reconnect_attempts": "3"},
            {"max_reconnect_attempts": 10_000},
            {"reconnect_timeout": -1},
            {"reconnect_timeout": 0},
            {"reconnect_timeout": "soon"},
        ], ids=["attempts0", "attempts_str", "attempts_huge", "timeout_negative", "timeout0", "timeout_word"])
        def test_mistaken(chatprobe, kwargs):
            chatprobe.chat("What is 6 * 7?", options=ChatOptions(disconnect_after=2, **kwargs))

        def test_then_chats(chatprobe):
            result = chatprobe.chat("What is 6 * 7?", options=ChatOptions(disconnect_after=2, reconnect_timeout="5s"))
            chatprobe.check(result)
            assert result.reconnects == ["resumed"] and result.reconnect_attempts == 1, result
        """)
    monkeypatch.setenv("COLUMNS", "400")  # the short summary's lines whole
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=60)
    res.assert_outcomes(failed=6, passed=1)
    said = {"attempts0": "options.max_reconnect_attempts=0: Input should be greater than or equal to 1",
            "attempts_str": "options.max_reconnect_attempts='3': Input should be a valid integer",
            "attempts_huge": "options.max_reconnect_attempts=10000: Input should be less than or equal to 1000",
            "timeout_negative": "options.reconnect_timeout=-1: a duration cannot be negative",
            "timeout0": "options.reconnect_timeout=0: *",
            "timeout_word": "options.reconnect_timeout='soon': *"}
    for test, why in said.items():
        line = f"FAILED test_bounds.py::test_mistaken[{test}] - ValueError: chatprobe.chat(): {why}"
        res.stdout.fnmatch_lines([line.replace("[", "[[]")])  # (a [ of fnmatch's own is a character class)
    out = res.stdout.str() + res.stderr.str()
    for noise in ("pytest_plugin.py", "flow.py", "pydantic", "validation error for", "TypeError"):
        assert noise not in out, out


def test_a_chat_the_server_cut_mid_run_says_how_far_it_got_and_what_never_came(pytester):
    """A team's server sends a chat's first two events, then closes the connection (1011) and refuses the resume.
    FAILED on the old code: the failure said only "chat incomplete: connection lost mid-run (WebSocket close code
    1011: ...)", neither how far the chat had got nor which events never came, in `check()`'s failure and in the
    section beside an assertion's alike; now a second line says both."""
    pytester.makeconftest("""
        import json
        import threading

        import pytest
        from websockets.sync.server import serve

        @pytest.fixture(scope="session")
        def chatprobe_url():
            def netra(ws):
                ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c"}}))
                p = json.loads(ws.recv(timeout=10))["payload"]
                if "message_id" in p:  # (a resume has none: refused as the first message was)
                    for seq, kind in enumerate(("agent_started", "agent_thinking"), 1):
                        ws.send(json.dumps({"type": kind, "run_id": "r-" + p["message_id"], "seq": seq,
                                            "payload": {"message_id": p["message_id"]}}))
                ws.close(1011, "gone")

            server = serve(netra, "127.0.0.1", 0)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
            server.shutdown()
            thread.join(10)
        """)
    pytester.makepyfile(test_cut="""
        def test_checked(chatprobe):
            chatprobe.check(chatprobe.chat("hi", deadline=10))

        def test_asserted(chatprobe):
            assert chatprobe.chat("hi", deadline=10).passed
        """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=60)
    res.assert_outcomes(failed=2)
    how_far = "2 events received, the last agent_thinking; missing tool_executing, tool_completed, agent_completed"
    res.stdout.fnmatch_lines(["E * chat incomplete: connection lost mid-run *", "E  * " + how_far])
    res.stdout.fnmatch_lines(["chat #1 of this test incomplete: connection lost mid-run *", "  " + how_far])
    assert "pytest_plugin.py" not in res.stdout.str(), res.stdout.str()


# What a hostile server puts in its words to drive the terminal of whoever reads them: a screen clear, an OSC 8
# hyperlink, an OSC 52 clipboard write, a bidi override and a C1 control sequence introducer.
TERMINAL_ATTACK = ("\x1b[2J\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x1b]52;c;aGk=\x07 "
                   "\u202edesrever\u202c \x9b31m")
RAW_TERMINAL_CHARS = ("\x1b", "\x07", "\x9b", "\u202e")


def test_a_servers_escape_sequences_reach_no_terminal_through_the_verdict_a_test_prints_or_asserts_with(pytester):
    """A server that refuses every message with an error_message holding escape sequences, and sends an event of a
    type holding them. FAILED on the old code: the verdict chat() returned carried them as they came, and a test's
    own `assert r.passed, r.error` (pytest shows the message as it is), `print(r.error)` or `print(violation)` put
    them raw on the terminal (pytest's output was scrubbed of secrets, not of control characters). Now the verdict the
    fixture hands a test has its text cleaned as every report's is: shown as escapes, the words still there."""
    from tests.integration.outside_servers import InThread, RawWsServer, WsConn

    async def hostile(conn: WsConn) -> None:
        await conn.send({"type": "connection_established", "data": {"connection_id": "c"}})
        while (raw := await conn.recv()) is not None:
            p = json.loads(raw).get("payload", {})
            if p.get("content") == "typed":
                await conn.send({"type": f"agent_started{TERMINAL_ATTACK}", "run_id": "r1",
                                 "thread_id": p.get("thread_id"), "seq": 1, "payload": {}})
                continue
            await conn.send({"type": "error_message", "error_code": "INVALID_MESSAGE",
                             "error_message": f"quota exceeded {TERMINAL_ATTACK}", "message_id": p.get("message_id")})

    pytester.makepyfile(test_hostile="""
        def test_asserted(chatprobe):
            r = chatprobe.chat("hi", deadline=5)
            assert r.passed, r.error

        def test_printed(chatprobe):
            r = chatprobe.chat("typed", deadline=2, first_event_limit=1, stall_limit=1)
            for v in r.violations + r.warnings:
                print("violation:", v)
            print("note:", r.note)
            assert r.passed

        def test_checked(chatprobe):
            chatprobe.check(chatprobe.chat("hi", deadline=5))
        """)
    with InThread(RawWsServer(hostile)) as server:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--color=no", "--chatprobe-target",
                                            server.url, timeout=60)
    res.assert_outcomes(failed=3)
    out = res.stdout.str() + res.stderr.str()
    assert out.count("quota exceeded \\x1b[2J\\x1b]8;;https://evil.example/") >= 2, out  # said, as escapes
    assert "violation: R12" in out and "\\x1b]52;c;aGk=\\x07" in out.partition("violation: R12")[2], out
    for c in RAW_TERMINAL_CHARS:
        assert c not in out, (c, out)


def test_a_servers_close_reason_in_the_websockets_clients_debug_line_reaches_the_live_log_escaped(pytester,
                                                                                                  tmp_path):
    """The websockets client (an install without picows) logs each frame it receives at DEBUG, a close frame's reason
    as the server wrote it ("< CLOSE 1000 (OK) …"). FAILED on the old code: the fixture's log filter scrubbed the
    line of secrets only, and a team's DEBUG live log and log file had the server's escape sequences raw. Now the
    line is cleaned as a report's text is."""
    from tests.integration.outside_servers import InThread, RawWsServer, WsConn

    async def closes_with_a_hostile_reason(conn: WsConn) -> None:
        send_frame = conn._frame

        async def with_reason(opcode: int, payload: bytes, fin: bool = True) -> None:
            if opcode == 0x8:  # the answer to the client's close
                payload = payload[:2] + f"bye {TERMINAL_ATTACK}".encode()
            await send_frame(opcode, payload, fin)

        conn._frame = with_reason  # type: ignore[method-assign]
        await conn.send({"type": "connection_established", "data": {"connection_id": "c"}})
        while (raw := await conn.recv()) is not None:
            p = json.loads(raw)["payload"]
            run = f"run-{p['message_id']}"
            for seq, kind in enumerate(("agent_started", "agent_thinking", "partial_result", "agent_completed"), 1):
                await conn.send({"type": kind, "run_id": run, "thread_id": p.get("thread_id"), "seq": seq,
                                 "payload": {"message_id": p["message_id"]} if seq == 1 else {}})

    pytester.makeconftest("import sys\n\nsys.modules['picows'] = None  # as if not installed\n")
    pytester.makepyfile(test_logged="""
        def test_chat(chatprobe):
            chatprobe.check(chatprobe.chat("hi", deadline=10, required=[]))
        """)
    log_file = tmp_path / "run.log"
    with InThread(RawWsServer(closes_with_a_hostile_reason)) as server:
        res = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "--color=no", "--chatprobe-target", server.url, "-o", "log_cli=true",
            "--log-cli-level=DEBUG", "--log-level=DEBUG", f"--log-file={log_file}", "--log-file-level=DEBUG",
            timeout=60)
    res.assert_outcomes(passed=1)
    out, logged = res.stdout.str() + res.stderr.str(), log_file.read_text()
    for text in (out, logged):
        assert "< CLOSE 1000 (OK) bye \\x1b[2J" in text, text  # the line is there, its reason escaped
        for c in RAW_TERMINAL_CHARS:
            assert c not in text, (c, text)
