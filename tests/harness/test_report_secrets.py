"""A server that echoes the bearer token back (in error frames, event fields, close reasons) never gets it into
the console, the JSON or the JUnit report: a raw agentsim-like WebSocket server written here, the real harness."""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import io
import json
import re
from urllib.parse import quote, unquote

import jwt
import pytest
from rich.console import Console
from websockets.asyncio.server import serve

from harness import redact
from harness.profiles import load_profile
from harness.report import print_summary, write_json, write_junit
from harness.runner import run_scenario
from harness.scenario import Scenario

from .reports import check_json_report, check_junit_report

try:
    from harness.targets import Target, TokenProvider
except ImportError:  # before the lead's move
    from harness.client import Target, TokenProvider  # type: ignore[no-redef]

GIVEN_TOKEN = "cp-given-token-7f3a9c2e41b8d605"
JWT_SECRET = "jwt-secret-for-the-echo-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_registry():
    redact.forget_all()
    yield
    redact.forget_all()


def echoing_server(seen: list[str], knows_secret: bool):
    """netra over WebSocket, except that it repeats the caller's credential (and the JWT secret, when it verifies
    minted tokens with it, as agentsim does) wherever a string goes."""
    leak = f" secret={JWT_SECRET}" if knows_secret else ""

    async def handler(ws):
        auth = ws.request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        seen.append(token)
        await ws.send(json.dumps({"type": "connection_established",
                                  "data": {"connection_id": f"conn-{token}", "note": f"hello {auth}"}}))
        n = 0
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                continue
            n += 1
            mid = msg["payload"]["message_id"]
            run = f"run{n}"

            def ev(kind, seq, run=run, mid=mid, ts=None, **fields):
                return json.dumps({"type": kind, "run_id": run, "seq": seq, "timestamp": ts or f"t-{token}",
                                   "payload": {"message_id": mid, **fields}})

            if n == 1:
                await ws.send(ev("agent_started", 1))
                await ws.send(ev(f"agent_{token}", 2))  # an unknown wire type that is the token
                await ws.send(ev("agent_thinking", 3, ts=leak.strip() or None))
                await ws.send(ev("tool_executing", 4, tool_call_id=f"call-{token}", tool_name=token))
                await ws.send(ev("agent_error", 5, error_message=f"bad credential {auth} (token={token}){leak}",
                                 is_recoverable=False))
            else:
                await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE",
                                          "error_message": f"see https://auth.example/cb?access_token={token}"
                                                           f" and https://u:{token}@auth.example/ ({token})"}))
                await ws.close(1011, f"bye {token}"[:100])
                return

    return handler


def quick() -> Scenario:
    return Scenario.model_validate({"name": "echo", "users": 2, "chats_per_user": 2, "connect_timeout": "2s",
                                    "max_reconnects": 0, "expect": {"deadline": "2s", "settle": "0.05s"}})


@pytest.mark.parametrize("mode", ["given", "minted"])
async def test_echoed_token_appears_in_no_output(tmp_path, mode):
    seen: list[str] = []
    tokens = TokenProvider(token=GIVEN_TOKEN) if mode == "given" else TokenProvider(jwt_secret=JWT_SECRET)
    async with serve(echoing_server(seen, mode == "minted"), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name=f"127.0.0.1:{port}",
                        tokens=tokens)
        async with asyncio.timeout(30):
            run = await run_scenario(quick(), target)

    assert seen and all(seen)  # the server did get a credential to echo
    if mode == "minted":
        assert {jwt.decode(t, JWT_SECRET, algorithms=["HS256"])["sub"] for t in seen}  # minted from the secret
    secrets = {*seen, JWT_SECRET, GIVEN_TOKEN}
    # The verdicts still carry the server's strings: without redaction the token would be in the reports.
    raw = json.dumps([r.to_dict() for r in run.results]) + " ".join(str(r.error) + r.note for r in run.results)
    assert any(s in raw for s in seen)
    assert (JWT_SECRET in raw) == (mode == "minted")

    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    write_json(str(out), [run])
    write_junit(str(junit), [run])
    check_json_report(out)
    check_junit_report(junit)
    console = io.StringIO()
    print_summary(Console(file=console, width=250, color_system=None), [run], worst=10)
    outputs = {"json": out.read_text(), "junit": junit.read_text(), "console": console.getvalue()}
    for name, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{name} shows a secret"
        assert "[REDACTED]" in text, name
    assert "auth.example" in outputs["json"]  # the URL is still there, its credentials are not


# -- a server that echoes the credential in disguise: JSON \u escapes, \/, percent-encoded, base64 --

ODD_TOKEN = "cp/given+token=7f3a9c2e41b8d605"  # '/', '+' and '=': JSON may write \/, a URL %2F %2B %3D


def disguises(secret: str) -> list[str]:
    """The secret as a server may echo it: each character or every other one \\u-escaped (either hex case), '/' as
    \\/, percent-encoded (a URL's quote or every byte), standard and urlsafe base64 at the three alignments."""
    raw = secret.encode()
    return [
        "".join(f"\\u{ord(c):04x}" if i % 2 == 0 else c for i, c in enumerate(secret)),
        "".join(f"\\u{ord(c):04X}" for c in secret),
        secret.replace("/", "\\/"),
        quote(secret, safe=""),
        "".join(f"%{b:02x}" for b in raw),
        *(enc(pre + raw + b"\xfe").decode() for pre in (b"", b"x", b"xy")
          for enc in (base64.b64encode, base64.urlsafe_b64encode)),
        # base64 in a URL's query: '+', '/' and '=' percent-encoded
        *(quote(enc(pre + raw).decode(), safe="") for pre in (b"", b"x", b"xy")
          for enc in (base64.b64encode, base64.urlsafe_b64encode)),
    ]


def revealed(text: str) -> str:
    """What an output shows once decoded the ways a reader might: HTML/XML entities, JSON escapes (twice: a JSON
    report of an escaped echo), %-escapes, and every base64-looking run at each of its four offsets."""
    text = html.unescape(text)
    for _ in range(2):
        text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text).replace("\\/", "/")
        text = unquote(text)
    decoded = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        run = run.replace("-", "+").replace("_", "/")
        for offset in range(4):
            chunk = run[offset:]
            with contextlib.suppress(binascii.Error):
                decoded.append(base64.b64decode(chunk[: len(chunk) - len(chunk) % 4]).decode("latin-1"))
    return "\n".join([text, *decoded])


def disguising_server(seen: list[str], knows_secret: bool):
    """netra over WebSocket, echoing the caller's credential (and the JWT secret, when it has it) in every disguise:
    raw in the frame's JSON (escapes a JSON parser decodes), inside a field's value (escapes that survive it), in a
    frame that is no JSON at all, and in the close reason."""

    async def handler(ws):
        token = ws.request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        seen.append(token)
        forms = [f for s in ([token, JWT_SECRET] if knows_secret else [token]) for f in disguises(s)]
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c1"}}))
        n = 0
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                continue
            n += 1
            mid = msg["payload"]["message_id"]
            if n == 1:
                head = f'"run_id":"r1","timestamp":"t","payload":{{"message_id":"{mid}"'
                await ws.send(f'{{"type":"agent_started","seq":1,{head}}}}}')
                seq = 1
                for form in forms:
                    # The escapes as the server's encoder wrote them (a JSON parser decodes them: recordings only)...
                    seq += 1
                    await ws.send(f'{{"type":"agent_thinking","seq":{seq},{head},"thought":"{form}"}}}}')
                    # ... and escapes inside a value (they survive the parser: the verdicts carry them).
                    for kind in ("agent_thinking", f"agent_{form}"):
                        seq += 1
                        await ws.send(json.dumps({"type": kind, "run_id": "r1", "seq": seq, "timestamp": form,
                                                  "payload": {"message_id": mid}}))
                await ws.send(json.dumps({"type": "agent_error", "run_id": "r1", "seq": seq + 1,
                                          "payload": {"message_id": mid, "is_recoverable": False,
                                                      "error_message": "upstream said: " + " ".join(forms)}}))
            else:
                await ws.send("not json: " + " ".join(forms))
                await ws.close(1011, forms[0][:100])
                return

    return handler


@pytest.mark.parametrize("mode", ["given", "minted"])
async def test_a_token_echoed_in_disguise_appears_in_no_output(tmp_path, mode):
    from harness.html_report import write_html
    from harness.recorder import Recorder

    seen: list[str] = []
    tokens = TokenProvider(token=ODD_TOKEN) if mode == "given" else TokenProvider(jwt_secret=JWT_SECRET)
    recordings = tmp_path / "rec"
    async with serve(disguising_server(seen, mode == "minted"), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name=f"127.0.0.1:{port}",
                        tokens=tokens, recorder=Recorder(recordings))
        async with asyncio.timeout(30):
            run = await run_scenario(quick(), target)

    assert seen and all(seen)
    # A secret's first 24 characters shown count as a leak (a field's bound may cut the rest).
    secrets = {s[:24] for s in ({*seen, JWT_SECRET} if mode == "minted" else {ODD_TOKEN})}
    # Without redaction the disguised credential would be in the reports (the verdicts carry the server's strings).
    raw = json.dumps([r.to_dict() for r in run.results]) + " ".join(str(r.error) + r.note for r in run.results)
    assert all(s in revealed(raw) for s in secrets), raw[:4000]

    out, junit, page = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    write_json(str(out), [run])
    write_junit(str(junit), [run])
    write_html(str(page), [run])
    check_json_report(out)
    check_junit_report(junit)
    console = io.StringIO()
    print_summary(Console(file=console, width=250, color_system=None), [run], worst=10)
    files = sorted(recordings.glob("*.jsonl"))
    assert files
    outputs = {"json": out.read_text(), "junit": junit.read_text(), "html": page.read_text(),
               "console": console.getvalue(), **{f.name: f.read_text() for f in files}}
    recorded = "\n".join(outputs[f.name] for f in files)
    assert recorded.count("[REDACTED]") >= len(disguises(ODD_TOKEN)), recorded[:3000]  # each echo is in, redacted
    for name, text in outputs.items():
        shown = revealed(text)
        for secret in secrets:
            assert secret not in shown, f"{name} shows {secret!r}"
        assert "[REDACTED]" in text, name


# Its base64 has a '+' (urlsafe: '-') only past the first 8 characters: the two forms share their head.
TILDE_TOKEN = "cp-given-tok~~~~~~en7f3a9c2e41b8d605"


async def test_a_token_whose_base64_forms_share_their_head_shows_no_part_in_any_output(tmp_path):
    """Echoed as percent-encoded standard and urlsafe base64 in one string: whichever form the redaction followed,
    the other's rest past the '+' showed (decoded: 'en7f3a9c2e41b8d605')."""
    from harness.html_report import write_html

    seen: list[str] = []
    async with serve(disguising_server(seen, False), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name=f"127.0.0.1:{port}",
                        tokens=TokenProvider(token=TILDE_TOKEN))
        async with asyncio.timeout(30):
            run = await run_scenario(quick(), target)
    assert seen == [TILDE_TOKEN] * len(seen) and seen
    out, junit, page = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    write_json(str(out), [run])
    write_junit(str(junit), [run])
    write_html(str(page), [run])
    parts = {TILDE_TOKEN[i:i + 12] for i in range(len(TILDE_TOKEN) - 11)}
    for path in (out, junit, page):
        shown = revealed(path.read_text())
        assert not [p for p in parts if p in shown], f"{path.name} shows part of the token"
