"""A proxy started anew (a deploy, a restart on a new address: a new `instance`) whose users' first chats all come
between Prometheus's first two scrapes of it, with the shipped rules (windows shortened tenfold, tests/e2e/rules.py):
rate() must count them. Real agentsim, the proxy and Prometheus as subprocesses on 127.0.0.1, every wait bounded.

FAILED on the code before MetricsSink.declare at the proxy's start: the proxy exported no chat series until its first
chat, so the first scrape that held `chatprobe_chats_total` already held every chat of the burst; increase() and
rate() read a series born above zero as no chats at all (0 of 6 failing chats), and the rules saw no traffic.
"""
from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from websockets.asyncio.client import connect

from .conftest import chatprobe_bin, query, scrape, start_on_free_port, start_prometheus, value, wait_for
from .rules import write_shortened_rules

pytestmark = [pytest.mark.e2e]
FACTOR = 10
CHATS = 6


async def failing_chats(url: str, token: str) -> None:
    """CHATS chats the agent fails (`#fail-agent`: a fatal error, R13), one after another on one connection."""
    async with asyncio.timeout(20), connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        for n in range(CHATS):
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": "#fail-agent What is 17 * 23?", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}))
            while json.loads(await ws.recv())["type"] not in ("agent_error", "agent_completed"):
                pass


@pytest.mark.timeout(120)
def test_chats_before_a_fresh_proxys_second_scrape_count_in_rate(procs, agentsim, tmp_path):
    _, sim_url, env = agentsim(think="0.01", tool_latency="0.01")
    proc, port = start_on_free_port(procs, "proxy", lambda p: [
        chatprobe_bin(), "proxy", "--upstream", sim_url.rsplit("/", 1)[0], "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{p}", "--target-name", "fresh", "--settle", "0.05s"])
    url = proc.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1) + "/ws"
    metrics = f"127.0.0.1:{port}"
    _, prom = start_prometheus(procs, [metrics], write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    # Prometheus has scraped the fresh proxy, before any chat.
    before = time.time()
    wait_for(lambda: query(prom, f'timestamp(up{{instance="{metrics}"}} == 1) > {before}'), 30,
             "Prometheus scraped the proxy")
    now = int(time.time())
    token = jwt.encode({"sub": "user", "iat": now, "exp": now + 600}, env["E2E_JWT_SECRET"], algorithm="HS256")
    asyncio.run(failing_chats(url, token))
    seen = scrape(f"http://{metrics}/metrics")
    assert value(seen, "chatprobe_chats_total", outcome="failed") == CHATS
    # Two scrapes after the burst: what the rules read of it.
    after = time.time()
    wait_for(lambda: query(prom, f'timestamp(up{{instance="{metrics}"}}) > {after + 1}'), 30,
             "Prometheus scraped the proxy twice after the chats")
    counted = query(prom, 'sum(increase(chatprobe_chats_total{target="fresh",outcome="failed"}[20s]))')
    assert counted and float(counted[0]["value"][1]) >= CHATS - 1, counted  # (increase() extrapolates a little)
    ratio = wait_for(lambda: query(
        prom, 'target_scenario:chatprobe_chats_not_passed_per_chats:ratio_rate5m{target="fresh"}'), 30,
        "the rules see the burst's chats, all of them failed")
    assert float(ratio[0]["value"][1]) == pytest.approx(1.0), ratio
