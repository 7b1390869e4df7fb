"""A server that echoes credentials no registry knows (a cookie, an API key, OAuth tokens, a password, a private key,
a Basic credential) in its events and its close reason: `chatprobe run --record` and then `chatprobe check` on the
recording, both real CLI processes against a raw netra server on loopback, show none of them in any output (terminal,
JSON, JUnit, HTML, the recording), and judge the run alike."""
from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

from websockets.asyncio.server import serve

ROOT = Path(__file__).resolve().parents[2]

# Each value is one a scrubber must not show: unique, so that a leak of any part of it is found.
SECRETS = {
    "cookie": "CKsid91f3a7", "set_cookie": "SCsess55d2c1", "password": "PWhunter2x91", "access_token": "AT8f2kQ1",
    "refresh_token": "RT4mZp77", "id_token": "ITq0w9e8", "client_secret": "CSy7u6t5", "api_key": "AKr4e3w2",
    "x_api_key": "XKq1a2s3", "header_api_key": "XHz9x8c7", "private_key": "PKmiIEvQ", "basic": "BPpass77",
    "nested": "NPwq12er", "close_cookie": "CRsid0c1",
}
BASIC = base64.b64encode(f"svc:{SECRETS['basic']}".encode()).decode()
NOT_JSON = (f"login failed: Set-Cookie: sid={SECRETS['close_cookie']}; X-Api-Key: {SECRETS['header_api_key']} "
            f'{{"password": "{SECRETS["password"]}"}}')


def echoing_server(seen: list[str]):
    """netra over WebSocket: the first chat's events carry the credentials in their payloads (a pass); the second chat
    gets a thought quoting them, then the connection is closed with a reason holding a Set-Cookie header."""

    async def handler(ws):
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c1", "user_id": "u1"}}))
        n = 0
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                continue
            n += 1
            mid = msg["payload"]["message_id"]
            seen.append(mid)

            def ev(kind, seq, n=n, mid=mid, **fields):
                return json.dumps({"type": kind, "run_id": f"run{n}", "seq": seq, "payload": {"message_id": mid,
                                                                                            **fields}})

            headers = {"Cookie": f"sid={SECRETS['cookie']}; theme=dark",
                       "Set-Cookie": f"session={SECRETS['set_cookie']}; Path=/; HttpOnly"}
            creds = {"password": SECRETS["password"], "access_token": SECRETS["access_token"],
                     "refresh_token": SECRETS["refresh_token"], "id_token": SECRETS["id_token"],
                     "client_secret": SECRETS["client_secret"], "apiKey": SECRETS["api_key"],
                     "x-api-key": SECRETS["x_api_key"],
                     "private_key": f"-----BEGIN PRIVATE KEY-----\n{SECRETS['private_key']}\n-----END PRIVATE KEY-----"}
            if n == 1:
                await ws.send(ev("agent_started", 1))
                await ws.send(ev("agent_thinking", 2, thought=f"X-Api-Key: {SECRETS['header_api_key']}"))
                await ws.send(ev("tool_executing", 3, tool_name="login", tool_call_id="c1", headers=headers, **creds))
                await ws.send(ev("tool_completed", 4, tool_name="login", tool_call_id="c1",
                                 result=json.dumps({"password": SECRETS["nested"], "ok": True}),
                                 auth=f"Basic {BASIC}"))
                # the keys of ordinary content stay, whatever their value says
                await ws.send(ev("partial_result", 5, content="passwordless sign-in, and a cookie for you",
                                 token="password"))
                await ws.send(ev("agent_completed", 6, result="done"))
            else:
                await ws.send(ev("agent_started", 1))
                await ws.send(ev("agent_thinking", 2, thought=f"login failed: {json.dumps(creds)} Cookie: "
                                                              f"{headers['Cookie']}; credential Basic {BASIC}"))
                # a frame that is not JSON (R12, quoted in the reports), the credentials in it
                await ws.send(NOT_JSON)
                # cut mid-chat: the close reason is the chat's error, in every report
                await ws.close(1011, f"Set-Cookie: sid={SECRETS['close_cookie']}; Path=/")
                return

    return handler


async def chatprobe(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def chats(report: Path) -> list[tuple[str, list[str]]]:
    [sc] = json.loads(report.read_text())["scenarios"]
    return [(c["outcome"], sorted(v["rule"] for v in c["violations"])) for c in sc["chats"]]


async def test_echoed_credential_shapes_are_in_no_output_and_check_judges_as_run(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: echo\nusers: 1\nchats_per_user: 2\nmax_reconnects: 0\nconnect_timeout: 2s\n"
                        "expect: {deadline: 2s, settle: 0.05s}\n")
    rec = tmp_path / "rec"
    seen: list[str] = []
    async with serve(echoing_server(seen), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        run_code, run_out = await chatprobe(
            "run", "--target", f"ws://127.0.0.1:{port}/ws", "--auth", "none", str(scenario), "--record", str(rec),
            "--json", str(tmp_path / "run.json"), "--junit", str(tmp_path / "run.xml"), "--html",
            str(tmp_path / "run.html"))
    assert len(seen) == 2, run_out  # both chats reached the server, which echoed the credentials
    check_code, check_out = await chatprobe(
        "check", str(rec), "--scenario", str(scenario), "--json", str(tmp_path / "check.json"), "--junit",
        str(tmp_path / "check.xml"), "--html", str(tmp_path / "check.html"))

    # The same verdicts both ways: scrubbing changed nothing `check` judges.
    assert run_code == check_code == 1, (run_out, check_out)
    assert chats(tmp_path / "check.json") == chats(tmp_path / "run.json")
    assert [c[0] for c in chats(tmp_path / "run.json")] == ["passed", "incomplete"]

    outputs = {"run terminal": run_out, "check terminal": check_out}
    for name in ("run.json", "run.xml", "run.html", "check.json", "check.xml", "check.html"):
        outputs[name] = (tmp_path / name).read_text()
    recordings = sorted(rec.iterdir())
    assert recordings
    for path in recordings:
        outputs[path.name] = path.read_text()
    for name, text in outputs.items():
        for what, secret in SECRETS.items():
            assert secret not in text, f"{name} shows the {what}"
        assert BASIC not in text, f"{name} shows the Basic credential"
    # The server's words did get there: the error (reports) and the close reason (the recording), redacted.
    assert "[REDACTED]" in outputs["run.json"] and "[REDACTED]" in outputs["check.json"]
    recorded = "".join(outputs[p.name] for p in recordings)
    assert "Set-Cookie: [REDACTED]" in recorded
    # What is ordinary content stays as it was.
    frames = [json.loads(line) for p in recordings for line in p.read_text().splitlines()]
    contents = [json.loads(f["frame"])["payload"] for f in frames if f.get("dir") == "recv" and
                '"partial_result"' in f.get("frame", "")]
    assert contents == [{"message_id": seen[0], "content": "passwordless sign-in, and a cookie for you",
                         "token": "password"}]


async def test_a_hand_edited_recording_with_credentials_shows_none_of_them(tmp_path):
    # A recording whose frame was put back as the server sent it (by hand, or by a recorder that knew no better):
    # `check` judges it as the live run was judged, and its reports show none of the credentials.
    await test_echoed_credential_shapes_are_in_no_output_and_check_judges_as_run(tmp_path)
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in (tmp_path / "rec").iterdir():
        lines = []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("dir") == "recv" and record["frame"].startswith("login failed: Set-Cookie"):
                record["frame"] = NOT_JSON
            lines.append(json.dumps(record))
        (edited / path.name).write_text("\n".join(lines) + "\n")
    assert SECRETS["close_cookie"] in "".join(p.read_text() for p in edited.iterdir())
    scenario = tmp_path / "s.yaml"
    code, out = await chatprobe("check", str(edited), "--scenario", str(scenario), "--json", str(tmp_path / "e.json"),
                                "--junit", str(tmp_path / "e.xml"), "--html", str(tmp_path / "e.html"))
    assert code == 1, out
    assert chats(tmp_path / "e.json") == chats(tmp_path / "run.json")
    for name, text in {"terminal": out, **{n: (tmp_path / n).read_text() for n in ("e.json", "e.xml", "e.html")}}.items():
        for what in ("close_cookie", "header_api_key", "password"):
            assert SECRETS[what] not in text, f"{name} shows the {what}"
