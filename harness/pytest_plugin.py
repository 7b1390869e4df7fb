"""pytest plugin: a `chatprobe` fixture giving a connected chat client and the checker, so a user's own
mission-critical tests read like `assert chatprobe.chat("refund order 42").passed`.

Target: `--chatprobe-target URL` (with `--chatprobe-profile`, `--chatprobe-auth`, `--chatprobe-token-env`, ...: the
target options of `chatprobe run`, prefixed), else the embedded
agentsim on a free loopback port. The client runs on its own event loop thread, so the fixture works in
plain and in asyncio tests alike.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import secrets
import sys
import threading
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import Field, ValidationError

from . import redact
from .checker import ChatResult, ExpectError
from .client import Session
from .durations import PositiveSeconds, seconds_given
from .errors import closest, hidden_package
from .events import RULES, Outcome, Role, Violation
from .flow import DEFAULTS, ChatOptions, Conversation
from .results import UNREACHABLE_KINDS
from .scenario import Expect, Int, Scenario, Strict, expectations_for
from .sinks import Sink
from .targets import (
    EMBEDDED_DIALECTS,
    Target,
    TargetOptions,
    TokenProvider,
    check_credentials,
    check_tls_fits,
    flag_named,
    make_target,
    parse_header_flags,
    read_token,
    target_profile,
)
from .transports.base import tls_advice_as
from .yamlfile import ConfigError

# The target options this plugin has a --chatprobe-* flag for (its messages name those flags).
PYTEST_FIELDS = ("url", "profile", "auth", "token_env", "token_file", "jwt_secret_env", "ca_file", "client_cert",
                 "client_key", "headers", "header_env", "subprotocols")

if TYPE_CHECKING:
    from .results import ScenarioRun


_DEFAULTS = {"--chatprobe-target": None, "--chatprobe-profile": "netra", "--chatprobe-auth": "header",
             "--chatprobe-token-env": None, "--chatprobe-token-file": None,
             "--chatprobe-jwt-secret-env": None, "--chatprobe-ca-file": None,
             "--chatprobe-client-cert": None, "--chatprobe-client-key": None, "--chatprobe-header": None,
             "--chatprobe-header-env": None, "--chatprobe-subprotocol": None}


# The plugin's two names: its pytest11 entry point's (autoload, `-p chatprobe`, `-p no:chatprobe`) and its module's
# (`-p harness.pytest_plugin`, a conftest's `pytest_plugins`).
_NAMES = ("chatprobe", __name__)


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Once registered under one of its names, the other is blocked: pytest takes a module registered a second time
    under another name as an error that stops it at start-up ("Plugin already registered under a different name"),
    which a conftest's `pytest_plugins = ["harness.pytest_plugin"]`, or `-p harness.pytest_plugin`, met wherever plugin
    autoload (the entry point) had loaded it, or was to load it, first. Blocked, that name is skipped."""
    if plugin is sys.modules[__name__]:
        for name in _NAMES:
            if manager.get_plugin(name) is None and not manager.is_blocked(name):
                manager.set_blocked(name)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("chatprobe")
    g.addoption("--chatprobe-target", default=None, help="agent chat server URL (default: embedded agentsim)")
    g.addoption("--chatprobe-profile", default="netra", help="wire-format profile name or file")
    g.addoption("--chatprobe-auth", choices=("header", "subprotocol", "none"), default="header",
                help="send the token as an Authorization header or as the jwt.<base64url(token)> subprotocol (WebSocket), or "
                     "send none")
    # No default of its own, as `chatprobe run --token-env`: a variable named and not set is a usage error, while
    # CHATPROBE_TOKEN, taken when set, may be unset (no token: a target that needs none).
    g.addoption("--chatprobe-token-env", default=None, metavar="VAR",
                help="read a bearer token from this environment variable (default CHATPROBE_TOKEN if set)")
    g.addoption("--chatprobe-token-file", default=None, metavar="FILE", help="read a bearer token from this file")
    g.addoption("--chatprobe-jwt-secret-env", default=None, metavar="VAR",
                help="mint an HS256 JWT per test with the secret in this variable (default CHATPROBE_JWT_SECRET if "
                     "set)")
    g.addoption("--chatprobe-header", action="append", metavar="'NAME: VALUE'",
                help="send this HTTP header with every connection's request (repeatable); a secret: prefer "
                     "--chatprobe-header-env")
    g.addoption("--chatprobe-header-env", action="append", metavar="NAME=VAR",
                help="send the header NAME with the value of the environment variable VAR (repeatable)")
    g.addoption("--chatprobe-ca-file", default=None, metavar="PEM",
                help="CA bundle to verify a wss:// or https:// --chatprobe-target (beside a ws:// or http:// "
                     "one, or none, a usage error: those speak no TLS)")
    g.addoption("--chatprobe-client-cert", default=None, metavar="PEM",
                help="client certificate to show a --chatprobe-target that asks for one (mutual TLS); its private "
                     "key in the same file or in --chatprobe-client-key")
    g.addoption("--chatprobe-client-key", default=None, metavar="PEM",
                help="the unencrypted private key of --chatprobe-client-cert, when not in its file")
    g.addoption("--chatprobe-subprotocol", action="append", metavar="NAME",
                help="offer this WebSocket subprotocol at the upgrade (repeatable, in order of preference; overrides "
                     "the profile's); with --chatprobe-auth subprotocol the token's jwt-auth pair follows")


# The connection's own violations a probe lists in its failure (the checker keeps at most 16 a connection).
MAX_CONNECTION_VIOLATIONS_LISTED = 50


class _ConnectionViolations(Sink):
    """What a probe's connections reported as their own at their end (Sink.connection_violation): another user's event
    (R8) or a malformed frame (R12) after the last chat was judged, with no chat after it to be told."""

    def __init__(self) -> None:
        self.listed: list[Violation] = []
        self.count = 0

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        self.count += 1
        if len(self.listed) < MAX_CONNECTION_VIOLATIONS_LISTED:
            self.listed.append(violation)


# The name of the thread each fixture's client runs on (its event loop's).
CLIENT_THREAD = "chatprobe-client"

# The chats of a test that did not pass kept to be shown beside its failure, in a section of this title.
MAX_CHATS_KEPT = 20
CHATS_NOT_PASSED = "chatprobe: chats that did not pass"


def verdict(result: ChatResult, label: str = "chat", url: str | None = None) -> str:
    """A chat that did not pass, for a person: its outcome and why on the first line (what pytest's short summary
    shows), then its violations one per line; scrubbed, as every report shows what a server wrote (a server's "invalid
    token" answer may quote the client's token back). A chat that could not reach the server (refused, timed out,
    TLS) names the address it tried, `url` (without its credentials)."""
    why = result.note or result.error
    if why and result.error_kind == "tls_error":
        why = tls_advice_as(why, "chatprobe-")  # the plugin's own flags (it has no --insecure)
    rules = dict.fromkeys(f"{v.rule.value} {RULES.get(v.rule.value, '')}".strip() for v in result.violations)
    rules.update(dict.fromkeys(f"{rule} {RULES.get(rule, '')}".strip() for rule in result.violations_not_listed))
    head = f"{label} {result.outcome.value}: " + (redact.clean(why, 1000) if why else ", ".join(rules) or "no reason given")
    if url is not None and result.error_kind in UNREACHABLE_KINDS:
        head += f", at {redact.clean(redact.redact_url(url), 300)}"  # (last: a scrubbed value ends the line)
    lines = [head]
    if result.outcome is Outcome.INCOMPLETE:
        lines.append("  " + _how_far(result))
    lines += [f"  {redact.clean(v, 1000)}" for v in result.violations]
    if result.violations_not_listed:
        more = ", ".join(f"{rule}: {n}" for rule, n in result.violations_not_listed.items())
        lines.append(f"  ... and {sum(result.violations_not_listed.values())} more ({more})")
    return "\n".join(lines)


def handed(result: ChatResult) -> ChatResult:
    """The verdict as the fixture hands it to a test: a copy whose text for a person (`error`, `note`, each violation's
    and warning's reason) and ids (`run_id`, `thread_id`, `parent_run_id`) are cleaned (redact.clean: secrets
    redacted, control characters, escape sequences and bidi overrides shown as escapes), so that a test's own
    `assert r.passed, r.error` or `print(r.error)` shows no server's escape sequence raw on the terminal. A ChatResult
    holds what the server said as it came, and each output cleans it (the reports, the sinks): a test is one more.
    `events` are left as decoded (the server's data, to compare): what a test prints of them is its own to clean."""
    return dataclasses.replace(
        result, error=None if result.error is None else redact.clean(result.error), note=redact.clean(result.note),
        violations=[_cleaned(v) for v in result.violations], warnings=[_cleaned(v) for v in result.warnings],
        run_id=_clean_id(result.run_id), thread_id=_clean_id(result.thread_id),
        parent_run_id=_clean_id(result.parent_run_id))


def _cleaned(violation: Violation) -> Violation:
    return dataclasses.replace(violation, reason=redact.clean(violation.reason))


def _clean_id(value: str | None) -> str | None:
    return None if value is None else redact.clean(value)


def _how_far(result: ChatResult) -> str:
    """An incomplete chat's progress, which its note (why it ended) does not say: how many events came, the last of
    them (when every event was kept), and the required events that never came."""
    n = result.events_received
    got = f"{n} event{'s' if n != 1 else ''} received" if n else "no event received"
    if n and len(result.events) == n:
        got += f", the last {redact.clean(result.events[-1].wire_type, 100)}"
    if result.missing:
        got += "; missing " + ", ".join(role.value for role in result.missing)
    return got


# A limit chat() takes: seconds, or a duration as a scenario writes it ("90s", "500ms").
Duration = float | str


class _ChatGiven(Strict):
    """The arguments of chat() that Expect does not hold, with a scenario step's constraints (ChatStep)."""

    expect_error: ExpectError = None
    disconnect_after: Int | None = Field(default=None, ge=1, le=1_000_000)
    abandon_after: Int | None = Field(default=None, ge=0, le=1_000_000)
    max_reconnects: Int = Field(default=3, ge=0, le=1_000_000)
    # As a scenario's top-level keys bound them (Scenario): a bound that is no bound is refused here too.
    max_reconnect_attempts: Int = Field(default=10, ge=1, le=1000)
    reconnect_timeout: PositiveSeconds = 30.0


# Where each of chat()'s checked values comes from, as the test wrote it.
_GIVEN_AS = {"disconnect_after": "options.disconnect_after", "abandon_after": "options.abandon_after",
             "max_reconnects": "options.max_reconnects", "settle": "options.settle",
             "max_reconnect_attempts": "options.max_reconnect_attempts",
             "reconnect_timeout": "options.reconnect_timeout"}


def _refusal(exc: ValidationError, called: str) -> str:
    """chat()'s arguments that pydantic refused, one clause each, in the words a test reads: the argument as written
    (`required[1]`, `options.disconnect_after`), the value given and why (no pydantic URL or model name)."""
    clauses = []
    for err in exc.errors(include_url=False):
        name, *rest = [str(part) for part in err["loc"]] or ["?"]
        where = _GIVEN_AS.get(name, name) + "".join(f"[{part}]" for part in rest)
        why = err["msg"].removeprefix("Value error, ")
        clauses.append(f"{where}={redact.clean(repr(err.get('input')), 80)}: {why}")
    return f"chatprobe.{called}(): " + "; ".join(clauses)


class ChatProbe:
    """A connected chat client for tests: `chat()` sends one message and returns its verdict. Closed when the test
    function returns: what its connection said after the last chat (another user's event, a malformed frame) then
    fails the test (`connection_failure`)."""

    def __init__(self, target: Target, user_id: str, timeout: float = 60.0) -> None:
        self.target = target
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=CLIENT_THREAD, daemon=True)
        self._thread.start()
        self._own = _ConnectionViolations()
        self._closed = False
        self._chats = 0  # chats played so far
        self._failed: list[tuple[int, ChatResult]] = []  # (its place among them, verdict) of those that did not pass
        self._told: set[int] = set()  # the id() of each of those whose check() raised
        self.session = Session(target, user_id, "pytest", self._own)
        self.conversation = Conversation()  # the thread a `follow_up` chat goes on with (a scenario's thread: continue)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout or self.timeout)

    def chat(self, message: str, *, required: list[Role] | None = None, streaming: bool = False,
             expect_error: ExpectError = None, first_event_limit: Duration = 2.0, deadline: Duration = 60.0,
             stall_limit: Duration = 30.0, options: ChatOptions = DEFAULTS, follow_up: bool = False) -> ChatResult:
        """Send one message and return its verdict; the limits and roles are a scenario's `expect:`. `follow_up`: a
        further turn of the conversation, on the thread of this client's previous chat (a scenario step's
        `thread: continue`: AG-UI's request carries the turns so far). Blocks the calling thread: in an async test
        whose server runs on the test's own event loop, `await chatprobe.achat(...)`."""
        __tracebackhide__ = True
        played, seconds = self._play(message, required, streaming, expect_error, first_event_limit, deadline,
                                     stall_limit, options, follow_up, "chat")
        return self._judged(self._call(played, seconds + 15))

    async def achat(self, message: str, *, required: list[Role] | None = None, streaming: bool = False,
                    expect_error: ExpectError = None, first_event_limit: Duration = 2.0,
                    deadline: Duration = 60.0, stall_limit: Duration = 30.0, options: ChatOptions = DEFAULTS,
                    follow_up: bool = False) -> ChatResult:
        """`chat()` for an async test: the verdict awaited, the test's event loop free meanwhile (a server that a
        fixture runs on that loop goes on answering; `chat()` there held the loop, and the server with it, until the
        connection timed out). Cancelled, it cancels the chat."""
        __tracebackhide__ = True
        played, seconds = self._play(message, required, streaming, expect_error, first_event_limit, deadline,
                                     stall_limit, options, follow_up, "achat")
        running = asyncio.run_coroutine_threadsafe(played, self._loop)
        try:
            return self._judged(await asyncio.wait_for(asyncio.wrap_future(running), seconds + 15))
        finally:
            running.cancel()  # (done already, but when this wait was cancelled or timed out)

    def _play(self, message: str, required: list[Role] | None, streaming: bool, expect_error: ExpectError,
              first_event_limit: Duration, deadline: Duration, stall_limit: Duration, options: ChatOptions,
              follow_up: bool, called: str) -> tuple[Coroutine[Any, Any, ChatResult], float]:
        """The chat as a coroutine for the client's loop and its deadline in seconds, its arguments checked here, in
        the caller's thread: a mistake is a ValueError naming the argument (the constraints a scenario step has), at
        the test's own line, and the method `called` ("chat" or "achat")."""
        __tracebackhide__ = True
        if self._closed:
            raise RuntimeError("chatprobe: the client is closed (the test returned)")
        if follow_up and self.conversation.thread_id is None:
            raise ValueError(f"{called}(follow_up=True) goes on with an earlier chat's thread: send one first")
        if not isinstance(options, ChatOptions):
            raise TypeError(f"chatprobe.{called}(options=...): a harness.flow.ChatOptions, not {type(options).__name__}")
        try:
            # The limit is seconds a program holds, not a person's bare `500` (which a scenario refuses): with its
            # unit.
            expect = Expect(required=required, streaming=streaming, first_event_limit=seconds_given(first_event_limit),
                            deadline=deadline, stall_limit=stall_limit, settle=options.settle)
            given = _ChatGiven(expect_error=expect_error, disconnect_after=options.disconnect_after,
                               abandon_after=options.abandon_after, max_reconnects=options.max_reconnects,
                               max_reconnect_attempts=options.max_reconnect_attempts,
                               reconnect_timeout=options.reconnect_timeout)
        except ValidationError as exc:
            refused = ValueError(_refusal(exc, called))
        else:
            options = dataclasses.replace(options, conversation=self.conversation, continues=follow_up,
                                          settle=expect.settle, reconnect_timeout=given.reconnect_timeout)
            exp = expectations_for(self.target.profile, expect, required=expect.required, expect_error=expect_error)
            return self.session.chat(message, exp, options), expect.deadline
        raise refused  # (outside the handler: no "during handling" of pydantic's error under it)

    def check_recording(self, path: str | Path, scenario: str | Path | Scenario | None = None,
                        fmt: str | None = None) -> ScenarioRun:
        """Judge a recording offline with this target's profile (a HAR your browser test saved, `--record`'s JSON
        Lines, an SSE body) and fail the test with the reasons unless every objective is met. A scenario file or a
        recording that cannot be read (ConfigError, RecordingError: its file, line and field) is raised at the test's
        own line, without chatprobe's frames under it."""
        __tracebackhide__ = True
        from .offline import assert_passed, check_recording

        try:
            run = check_recording(path, self.target.profile, scenario, fmt)
        except ConfigError as exc:
            refused = exc
        else:
            return assert_passed(run)
        # Raised here, outside the handler (this frame hidden, the chain cut): the traceback pytest shows is the test's
        # line and the one message, where it was every loader frame down to the one that raised.
        raise refused.with_traceback(None) from None

    def check(self, result: ChatResult) -> ChatResult:
        """Fail the test with the chat's violations, one per line, unless it passed. Given what is no verdict (an
        `achat()` not awaited: its coroutine), a TypeError saying what it takes."""
        __tracebackhide__ = True  # pytest's traceback ends at the test's own line, not in here
        if not isinstance(result, ChatResult):
            if inspect.iscoroutine(result):
                result.close()  # never started: nothing sent (and no "coroutine was never awaited" warning)
                raise TypeError("chatprobe.check() takes a chat's verdict, not a coroutine: "
                                "chatprobe.check(await chatprobe.achat(...))")
            raise TypeError(f"chatprobe.check() takes a chat's verdict (a ChatResult, what chat() returns), not "
                            f"{type(result).__name__}")
        if result.outcome is not Outcome.PASSED:
            self._told.add(id(result))  # its verdict is the failure's own message: not said again beside it
            raise AssertionError(verdict(result, url=self.target.url))
        return result

    def _judged(self, result: ChatResult) -> ChatResult:
        """A chat's verdict as chat() returns it (its text cleaned: `handed`), kept (the first MAX_CHATS_KEPT that did
        not pass) to be shown with the test's failure however the test asserted on it."""
        result = handed(result)
        if result.outcome is not Outcome.PASSED and len(self._failed) < MAX_CHATS_KEPT:
            self._failed.append((self._chats, result))
        self._chats += 1
        return result

    def failed_chats(self) -> str | None:
        """The chats of this test that did not pass and whose verdict no `check()` raised, each with its verdict
        (scrubbed), or None: what pytest shows beside a failure the test's own assertion made (`assert
        chatprobe.chat(...).passed` shows the ChatResult's repr, cut short before its violations)."""
        untold = [(n, r) for n, r in self._failed if id(r) not in self._told]
        if not untold:
            return None
        return "\n".join(verdict(r, f"chat #{n + 1} of this test", self.target.url) for n, r in untold)

    @property
    def connection_violations(self) -> list[Violation]:
        """The violations the client's connections reported as their own so far (at their end: `close()`), the first
        MAX_CONNECTION_VIOLATIONS_LISTED, their reasons cleaned (`handed`)."""
        return [_cleaned(v) for v in self._own.listed]

    def connection_failure(self) -> str | None:
        """What fails the test for its connections' own violations, one per line (scrubbed, as the server wrote
        them), or None when there were none."""
        if not self._own.count:
            return None
        more = self._own.count - len(self._own.listed)
        lines = ["chatprobe: the connection's own violations, after its last chat (no chat after them was told):"]
        lines += [f"  {redact.clean(v, 1000)}" for v in self._own.listed]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)

    def close(self) -> None:
        """Close the connection (what it said after the last chat is reported now: `connection_failure`) and stop the
        client's thread. Again: nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.session.close(), 10)
        finally:
            # Then the loop itself: what still runs on it cancelled (a chat whose wait timed out), its async
            # generators finalized, and the loop closed with its self-pipe. A loop left open was a ResourceWarning
            # ("unclosed event loop", two unclosed sockets) for every test that used the fixture, at whichever later
            # test the garbage collector ran: an error under `-W error` or `filterwarnings = error`.
            with contextlib.suppress(Exception):
                self._call(self._cancel_the_rest(), 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    async def _cancel_the_rest(self) -> None:
        here = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not here]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=5)
        await self._loop.shutdown_asyncgens()


_OPTION = object()  # _target_options: the URL --chatprobe-target gives


def _target_options(config: pytest.Config, url: Any = _OPTION, *, at_start: bool = False
                    ) -> tuple[TargetOptions, Target]:
    """The --chatprobe-* options as TargetOptions and the Target they make for `url` (default --chatprobe-target; the
    embedded agentsim's stand-in URL when None), checked by the loaders `chatprobe run` uses; a mistake is pytest's
    usage error (one line, exit 4, before any test runs) naming the --chatprobe- flag."""
    if url is _OPTION:
        url = config.getoption("--chatprobe-target")
    try:
        subprotocols = config.getoption("--chatprobe-subprotocol")
        opts = TargetOptions(url=url, name="pytest", profile=config.getoption("--chatprobe-profile"),
                             auth=config.getoption("--chatprobe-auth"),
                             token_env=config.getoption("--chatprobe-token-env"),
                             token_file=config.getoption("--chatprobe-token-file"),
                             jwt_secret_env=config.getoption("--chatprobe-jwt-secret-env"),
                             ca_file=config.getoption("--chatprobe-ca-file"),
                             client_cert=config.getoption("--chatprobe-client-cert"),
                             client_key=config.getoption("--chatprobe-client-key"),
                             headers=parse_header_flags(config.getoption("--chatprobe-header"), "headers"),
                             header_env=parse_header_flags(config.getoption("--chatprobe-header-env"), "header_env"),
                             subprotocols=tuple(subprotocols) if subprotocols is not None else None)
        # The token is read as `chatprobe run` reads it, for a --chatprobe-target only (the embedded agentsim's
        # are minted): a --chatprobe-token-env naming a variable that is not set is refused here, not sent as no
        # token to fail every test with the server's auth error.
        # An empty value (an unset "$VAR" in addopts), a token file that is not there, a variable named that is not
        # set, is refused whatever the server, as `chatprobe run` does.
        check_credentials(opts)
        tokens = read_token(opts) if url is not None else TokenProvider()
        if url is None:
            # The embedded agentsim speaks the profile, as `chatprobe run --profile` without --target has it: a
            # stand-in URL of the profile's own transport (the SSE address for AG-UI, as the embedded server's).
            # At start-up (`at_start`) the server may yet be a conftest's (`chatprobe_url` of a conftest that pytest
            # loads while collecting): the options are checked against a stand-in of a transport they fit, and
            # whether the embedded agentsim can serve them when the fixture finds it is the server.
            profile = target_profile(opts)
            if profile.name not in EMBEDDED_DIALECTS and not at_start:
                raise pytest.UsageError(
                    f"chatprobe: --chatprobe-profile {profile.name}: the embedded agentsim speaks "
                    f"{', '.join(sorted(EMBEDDED_DIALECTS))}; give --chatprobe-target URL, the address of a server "
                    f"that speaks {profile.name} (or a conftest's chatprobe_url fixture)")
            websocket = profile.transports[0] != "sse" or (
                at_start and bool(opts.subprotocols) and "websocket" in profile.transports)
            url = "ws://127.0.0.1:1" if websocket else "http://127.0.0.1:1/agent"
            if not at_start:  # (at start a conftest's chatprobe_url may yet name a wss:// server)
                check_tls_fits(opts, "the embedded agentsim", "give --chatprobe-target wss://… for a server of yours")
            return opts, make_target(opts, tokens, url=url, stand_in=True)
        return opts, make_target(opts, tokens, url=url)
    except ConfigError as exc:
        raise pytest.UsageError(f"chatprobe: {redact.clean(flag_named(exc, '--chatprobe-', PYTEST_FIELDS), 1000)}"
                                ) from None


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> Generator[None, object, object]:
    """A misspelt --chatprobe- option is pytest's usage error in one line naming the option it most looks like, as
    `chatprobe run` names a misspelt flag (pytest's own error lists it as unrecognized, with no suggestion). Checked
    once the initial conftests have added their options, right before pytest parses the command line."""
    result = yield
    misspelt = [(name, meant) for arg in args if isinstance(arg, str) and arg.startswith("--")
                and (name := arg.partition("=")[0]) not in _DEFAULTS and (meant := closest(name, _DEFAULTS))]
    if misspelt:
        try:
            _, unknown = parser.parse_known_and_unknown_args(args)
        except pytest.UsageError:  # another mistake of the command line: pytest reports it as it parses
            return result
        unknown_names = {arg.partition("=")[0] for arg in unknown}
        for name, meant in misspelt:
            if name in unknown_names:  # not another plugin's option (nor a prefix of one)
                raise pytest.UsageError(f"chatprobe: unrecognized option {redact.clean(name, 100)} "
                                        f"(did you mean {meant}?)")
    return result


class _ScrubbedOwnRequests(logging.Filter):
    """httpx logs each request at INFO with its whole URL ("HTTP Request: POST http://…/agent?api_key=… "HTTP/1.1 200
    OK""), a query's credential included: in a team's pytest run at log level INFO, pytest's live log (log_cli), its
    --log-file and any handler of the team's own showed it as it was (only the report sections this plugin scrubs had
    it redacted). The records the fixture's own client makes (on its thread) are scrubbed as its reports are; the
    team's own requests, on its own threads, are left as they are. One record a request, never one an event. The
    thread is the one logging (a logger's filter runs on it), not the record's threadName: None in a run whose
    conftest set `logging.logThreads = False`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return redact.scrub_record(record) if threading.current_thread().name == CLIENT_THREAD else True


_SCRUBBED_OWN_REQUESTS = _ScrubbedOwnRequests()


def pytest_configure(config: pytest.Config) -> None:
    """Options given on the command line are checked at start-up, not at the first test that asks for the fixture
    (there a UsageError is that test's setup error, a traceback and exit 1). Not when a conftest loaded by now
    overrides `chatprobe_url`: the server is the conftest's, whose URL is known only when its fixture runs (without
    --chatprobe-target the options were checked against the embedded agentsim, which refused a profile of the team's
    own dialect, or a subprotocol with AG-UI's SSE address); the fixture checks them against that URL, and a mistake
    fails each test that asks for it with one line."""
    for name in redact.CLIENT_LOGGERS:  # (each by its own name: redact says why)
        logging.getLogger(name).addFilter(_SCRUBBED_OWN_REQUESTS)  # (once: a filter added again is not added)
    if any(config.getoption(name) not in (None, default) for name, default in _DEFAULTS.items()) and \
            not _url_overridden(config):
        _target_options(config, at_start=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in redact.CLIENT_LOGGERS:  # (each by its own name: redact says why)
        logging.getLogger(name).removeFilter(_SCRUBBED_OWN_REQUESTS)


def _url_overridden(config: pytest.Config) -> bool:
    """Whether a conftest (or plugin) loaded by now defines a `chatprobe_url` fixture of its own."""
    here = sys.modules[__name__]
    return any(plugin is not here and getattr(plugin, "chatprobe_url", None) is not None
               for plugin in config.pluginmanager.get_plugins())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """When a test that used the `chatprobe` fixture returns, its connection is closed and what the connection said
    after the test's last chat (another user's event, R8; a malformed frame, R12: the connection's own violations,
    FrameRouter.connection_ended) fails that test, as a chat's violations fail `check()`. A test that failed already
    keeps its own failure, with them added as a note."""
    probe = getattr(item, "funcargs", {}).get("chatprobe")
    if not isinstance(probe, ChatProbe):
        return (yield)
    try:
        result = yield
    except BaseException as exc:  # the test's own failure (a skip, an exit: nothing to add) is what it reports
        try:
            probe.close()
        except Exception as closing:  # (a close that timed out: said beside it, never instead of it)
            exc.add_note(f"chatprobe: closing the connection failed: {redact.clean(closing, 200)}")
        if isinstance(exc, Exception) and (told := probe.connection_failure()) is not None:
            exc.add_note(told)
        raise
    probe.close()
    if (told := probe.connection_failure()) is not None:
        pytest.fail(told, pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """What pytest reports of a test that used the `chatprobe` fixture, scrubbed (redact.scrub) as chatprobe's own
    reports are: a server's words reach it in an assertion's explanation (`assert chatprobe.chat(...).passed` shows
    the ChatResult's repr, its `error` whole under -vv), in the arguments and locals of a traceback, in captured
    output; an "invalid token" answer quoting the client's token back put the token in pytest's output and in
    --junitxml. Other tests' reports are left as they are."""
    report = yield
    probe = getattr(item, "funcargs", {}).get("chatprobe")
    if isinstance(probe, ChatProbe) and isinstance(report, pytest.TestReport) and report.failed \
            and call.when == "call" and (told := probe.failed_chats()) is not None:
        # A section of the failure itself (its traceback's, where pytest has one): part of what --junitxml writes as
        # the failure's text and shown whatever --show-capture says. A report section (report.sections) was neither:
        # JUnit XML keeps only the captured output's, and --show-capture=no (or =stdout, =log) left it out.
        if (addsection := getattr(report.longrepr, "addsection", None)) is not None:
            addsection(CHATS_NOT_PASSED, told)
        else:  # (a failure without a traceback, pytest.fail(..., pytrace=False): its text is the test's own)
            report.sections.append((CHATS_NOT_PASSED, told))
    if "chatprobe" in getattr(item, "fixturenames", ()) and isinstance(report, pytest.TestReport):
        report.longrepr = _scrubbed(report.longrepr)
        report.sections = [(title, redact.scrub(text)) for title, text in report.sections]
    return report


def _scrubbed(value: Any, depth: int = 0) -> Any:
    """`value` (a pytest failure representation: dataclasses of strings, lists and tuples of them) with each string
    scrubbed; a list or dataclass changed in place (pytest and xdist keep their types). Scrubbed, not cleaned: pytest
    colours an assertion's diff with escape sequences in this text, which escaping would show as `\x1b[94m`; the
    server's words a test is handed are cleaned already (`handed`), and what else a test puts here is its own."""
    if isinstance(value, str):
        return redact.scrub(value)
    if depth > 12:
        return value
    if isinstance(value, list):
        value[:] = [_scrubbed(v, depth + 1) for v in value]
    elif isinstance(value, tuple):
        return tuple(_scrubbed(v, depth + 1) for v in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            with contextlib.suppress(AttributeError, dataclasses.FrozenInstanceError):
                setattr(value, f.name, _scrubbed(getattr(value, f.name), depth + 1))
    return value


@pytest.fixture(scope="session")
def chatprobe_url(request: pytest.FixtureRequest) -> str | None:
    """The address of the server the `chatprobe` fixture talks to: --chatprobe-target, None for the embedded agentsim.
    A conftest that starts its own server overrides it (a session fixture of the same name returning that server's
    URL); the other --chatprobe-* options (profile, token, headers, ...) apply to it as to --chatprobe-target."""
    return request.config.getoption("--chatprobe-target")


@pytest.fixture(scope="session")
def chatprobe_target(request: pytest.FixtureRequest, chatprobe_url: str | None) -> Iterator[Target]:
    url = chatprobe_url
    if url is not None and not isinstance(url, str):
        pytest.fail(f"chatprobe: the chatprobe_url fixture gave {type(url).__name__}, not a URL string (or None for "
                    "the embedded agentsim)", pytrace=False)
    try:
        opts, target = _target_options(request.config, url)
    except pytest.UsageError as exc:
        # What start-up could not check (the server a conftest's fixture names, or the embedded agentsim when no
        # fixture named one): every test that asks for it fails with the one line.
        given = url == request.config.getoption("--chatprobe-target")
        pytest.fail(f"{exc}" if given else f"{exc} (the URL the chatprobe_url fixture gave)", pytrace=False)
    if url is not None:
        yield target
        return
    try:
        from agentsim.agui import AguiSim
        from agentsim.server import AgentSim, SimConfig, run_in_thread
    except ImportError as exc:
        if (told := hidden_package(exc)) is None:
            raise
        pytest.fail(f"chatprobe: the embedded agentsim: {redact.clean(told, 2000)}", pytrace=False)

    secret = secrets.token_urlsafe(32)
    # The embedded agentsim speaks the profile (_target_options refused one it cannot speak).
    config = SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.005, tool_latency=0.002,
                       protocol=target.profile.name)
    handle = run_in_thread(server=AguiSim(config) if config.protocol == "ag-ui" else AgentSim(config))
    try:
        yield make_target(opts, TokenProvider(jwt_secret=secret), url=handle.url)
    finally:
        handle.stop()


@pytest.fixture
def chatprobe(chatprobe_target: Target) -> Iterator[ChatProbe]:
    probe = ChatProbe(chatprobe_target, f"pytest-{secrets.token_hex(4)}")
    try:
        yield probe
    finally:
        probe.close()
