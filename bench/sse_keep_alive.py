"""CPU per chat of one SSE user over https:// (TLS), both clients (`chatprobe run`'s asyncio Session and the Locust
user's SyncSession on a plain thread), this tree against another revision (`--against REV`, unpacked with git
archive), alternating. The server is a small keep-alive HTTP/1.1 TLS server (a trustme CA) in a process of its own,
each answer a whole AG-UI run with a Content-Length; CPU is the client process's, the chats only (start-up and a
first chat left out). Every chat must pass.

    .venv/bin/python bench/sse_keep_alive.py --chats 300 --rounds 3 --against 968da58
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import tree_at  # noqa: E402

SERVER = r'''
import asyncio, json, re, ssl, sys, trustme
ca = trustme.CA(); cert = ca.issue_cert("127.0.0.1"); ca.cert_pem.write_to_path(sys.argv[1])
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); cert.configure_cert(ctx)
def ev(**f): return b"data: " + json.dumps(f).encode() + b"\n\n"
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            inp = json.loads(await r.readexactly(int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))))
            t, run = inp["threadId"], inp["runId"]
            body = (ev(type="RUN_STARTED", threadId=t, runId=run)
                    + ev(type="TEXT_MESSAGE_START", messageId="a", role="assistant")
                    + ev(type="TEXT_MESSAGE_CONTENT", messageId="a", delta="42")
                    + ev(type="TEXT_MESSAGE_END", messageId="a") + ev(type="RUN_FINISHED", threadId=t, runId=run))
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    print(f"https://127.0.0.1:{s.sockets[0].getsockname()[1]}/agent", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''

CLIENT = r'''
import asyncio, resource, sys
url, ca, n, which = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from harness.client import Session
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target
profile = load_profile("ag-ui")
target = Target(url=url, profile=profile, name="t", auth="none", ca_file=ca)
exp, opts = Scenario(name="t", expect=Expect(deadline=5)).expectations(profile), ChatOptions(settle=0.01)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
async def run_async():
    s = Session(target, "u1", "t", Sink(), connect_timeout=5)
    await s.chat("warm", exp, opts)
    c0 = cpu()
    ok = [(await s.chat("hi", exp, opts)).outcome.value for _ in range(n)].count("passed")
    c1 = cpu()
    await s.close()
    return ok, c1 - c0
def run_sync():
    s = SyncSession(target, "u1", "t", Sink(), connect_timeout=5)
    s.chat("warm", exp, opts)
    c0 = cpu()
    ok = [s.chat("hi", exp, opts).outcome.value for _ in range(n)].count("passed")
    c1 = cpu()
    s.close()
    return ok, c1 - c0
ok, used = asyncio.run(run_async()) if which == "asyncio" else run_sync()
print(ok, used)
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", metavar="REV", help="also run the clients as they were at this git revision")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        trees = {"this tree": ROOT}
        if args.against:
            trees[args.against] = tree_at(args.against, tmp / "against", ("harness", "scenarios"))
        ca = str(tmp / "ca.pem")
        server = subprocess.Popen([sys.executable, "-c", SERVER, ca], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            got: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for which in ("asyncio", "sync"):
                    for name, tree in trees.items():
                        out = subprocess.run([sys.executable, "-c", CLIENT, url, ca, str(args.chats), which],
                                             cwd=tree, env={"PYTHONPATH": str(tree)}, capture_output=True,
                                             text=True, timeout=300)
                        if out.returncode or len(out.stdout.split()) != 2:
                            raise SystemExit(f"{name} {which}: exit {out.returncode}\n{out.stderr[-2000:]}")
                        ok, used = out.stdout.split()
                        if int(ok) != args.chats:
                            raise SystemExit(f"{name} {which}: {ok}/{args.chats} chats passed\n{out.stderr[-2000:]}")
                        got.setdefault((which, name), []).append(float(used) * 1000 / args.chats)
                        print(f"{which:8} {name:12} {got[which, name][-1]:6.3f} ms/chat", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    print(f"\n{args.chats} chats of one user over https://, {args.rounds} rounds, median CPU per chat:")
    for (which, name), values in got.items():
        print(f"  {which:8} {name:12} {statistics.median(values):6.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
