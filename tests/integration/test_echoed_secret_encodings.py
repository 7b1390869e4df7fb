"""A server that echoes the credentials chatprobe holds (the token given, a --header-env value, the JWT secret) in the
encodings an encoder or a careless server produces: upper or lower case (an error message normalized), hex of the
bytes (a debug dump, Go's `%x`), HTML numeric character references (an encoder that writes every character so), and
the JWT minted from the secret as hex and as references, in the welcome frame, event payloads, an error event's
message, a frame that is no JSON, the close reason, and halves of the token in two frames. `chatprobe run` (every
report, the recording) and `chatprobe check` of the recording, real CLI processes against a raw netra server on
loopback, show none of them in any output, and judge the run alike."""
from __future__ import annotations

import asyncio
import html
import json
import os
import re
import sys
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

ROOT = Path(__file__).resolve().parents[2]

TOKEN = "Xk9fQ2pL7mN4rT8vW1yZ3bC6"
HEADER = "Hq7Zr2Lw9Xc4Vb8Nm3Ks5Jd0"
JWT_SECRET = "Jx7Q2mPz9Lk4Rt8Vw1Yb3Nc6Hd5Fg0Se"


def encodings(secret: str, case: bool = True) -> list[str]:
    """`case`: also upper and lower case (not for a minted JWT: its signature's letters' case is not to be guessed)."""
    raw = secret.encode()
    return [secret.upper(), secret.lower()] * case + [
        raw.hex(), raw.hex().upper(), "".join(f"&#{ord(c)};" for c in secret),
        "".join(f"&#x{ord(c):x};" for c in secret),
        "".join(f"&#X{ord(c):X};" if i % 2 else f"&#{ord(c)};" for i, c in enumerate(secret))]


def echoing_server(seen: list[str], secrets: list[str]):
    """netra over WebSocket, repeating the credentials in every encoding wherever a string goes."""

    async def handler(ws):
        seen.append(ws.request.headers.get("Authorization", ""))
        forms = [f for s in secrets for f in encodings(s)]
        if (bearer := seen[-1].removeprefix("Bearer ")).startswith("eyJ"):  # a minted JWT
            forms += encodings(bearer, case=False) + encodings(f"Authorization: {seen[-1]}", case=False)[:2]
        every = " | ".join(forms)
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": every}}))
        n = 0
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                continue
            n += 1
            mid = msg["payload"]["message_id"]

            def ev(kind, seq, n=n, mid=mid, **fields):
                return json.dumps({"type": kind, "run_id": f"run{n}", "seq": seq,
                                   "payload": {"message_id": mid, **fields}})

            await ws.send(ev("agent_started", 1))
            if n == 1:
                half = len(secrets[0]) // 2
                await ws.send(ev("partial_result", 2, content=secrets[0][:half].upper()))
                await ws.send(ev("partial_result", 3, content=secrets[0][half:].lower()))
                await ws.send(ev("agent_thinking", 4, thought=every))
                await ws.send(ev("agent_error", 5, error_message=every, is_recoverable=False))
            else:
                await ws.send("not json: " + every)
                await ws.close(1011, f"{secrets[0].upper()} {secrets[0].encode().hex()}")
                return

    return handler


def revealed(text: str) -> str:
    """What an output shows decoded the ways a reader might (entities, JSON escapes, hex runs at both alignments), in
    lower case."""
    text = html.unescape(text)
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
    decoded = []
    for run in re.findall(r"[0-9a-fA-F]{16,}", text):
        for start in (0, 1):
            chunk = run[start:]
            decoded.append(bytes.fromhex(chunk[: len(chunk) // 2 * 2]).decode("latin-1"))
    return "\n".join([text, *decoded]).lower()


async def chatprobe(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness", *args, cwd=ROOT,
                                                env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def chats(report: Path) -> list[tuple[str, list[str]]]:
    [sc] = json.loads(report.read_text())["scenarios"]
    return [(c["outcome"], sorted(v["rule"] for v in c["violations"])) for c in sc["chats"]]


@pytest.mark.parametrize("auth", ["token", "jwt"])
async def test_secrets_echoed_in_case_hex_or_html_references_are_in_no_output(tmp_path, auth):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: echo\nusers: 1\nchats_per_user: 2\nmax_reconnects: 0\nconnect_timeout: 2s\n"
                        "expect: {deadline: 2s, settle: 0.05s}\n")
    rec = tmp_path / "rec"
    env = {"ECHO_TOKEN": TOKEN, "ECHO_HEADER": HEADER, "ECHO_JWT": JWT_SECRET}
    given = ["--token-env", "ECHO_TOKEN"] if auth == "token" else ["--jwt-secret-env", "ECHO_JWT"]
    secrets = [TOKEN if auth == "token" else JWT_SECRET, HEADER]
    seen: list[str] = []
    async with serve(echoing_server(seen, secrets), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        run_code, run_out = await chatprobe(
            "run", "--target", f"ws://127.0.0.1:{port}/ws", *given, "--header-env", "X-Api-Token=ECHO_HEADER",
            str(scenario), "--record", str(rec), "--json", str(tmp_path / "run.json"), "--junit",
            str(tmp_path / "run.xml"), "--html", str(tmp_path / "run.html"), env=env)
    assert seen and all(seen), run_out  # the server got the credentials, and echoed them
    check_code, check_out = await chatprobe(
        "check", str(rec), "--scenario", str(scenario), "--json", str(tmp_path / "check.json"), "--junit",
        str(tmp_path / "check.xml"), "--html", str(tmp_path / "check.html"), env={})

    assert run_code == check_code == 1, (run_out, check_out)
    assert chats(tmp_path / "check.json") == chats(tmp_path / "run.json")
    outputs = {"run terminal": run_out, "check terminal": check_out}
    for name in ("run.json", "run.xml", "run.html", "check.json", "check.xml", "check.html"):
        outputs[name] = (tmp_path / name).read_text()
    recordings = sorted(rec.iterdir())
    assert recordings
    outputs |= {path.name: path.read_text() for path in recordings}
    # The reports quote the server's words (the error event's message), the recording every frame: redacted.
    assert "[REDACTED]" in outputs["run.json"] and "[REDACTED]" in "".join(outputs[p.name] for p in recordings)
    if auth == "jwt":  # the token minted, but its header (the same for every HS256 JWT)
        secrets += [bearer.removeprefix("Bearer ").partition(".")[2] for bearer in seen]
    for name, text in outputs.items():
        shown = revealed(text)
        for secret in secrets:
            # any 8 characters of a secret in a row (MIN_RUN), whatever their case
            runs = [secret[i:i + 8].lower() for i in range(len(secret) - 7)]
            assert not [r for r in runs if r in shown], f"{name} shows part of {secret[:4]}…"
