"""The bound on a client's frame before it is parsed (profiles.MAX_CLIENT_STRUCTURE, `too_dense`): a frame of more
JSON structural characters than that is read as "dense", no chat, and never parsed; one within it is parsed as ever.
The messages here are also the hostile client's of tests/monitors/test_proxy_dense_frames.py."""
from __future__ import annotations

import json

import pytest

from harness.profiles import MAX_CLIENT_STRUCTURE, load_profile

SIZE = 4 * 1024 * 1024 - 64  # within the proxy's default --max-size (4 MiB): no frame the byte cap refuses


def filled(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """`head`, `unit` as many times as SIZE holds, `tail`: a JSON text of SIZE bytes at most."""
    return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail


# Each a valid JSON text of ~4 MiB, each well past the bound (hundreds of thousands of values and more).
DENSE = {
    "ints": filled(b"[", b"0,", b"0]"),
    "empty-arrays": filled(b'{"a":[', b"[],", b"[]]}"),
    "floats": filled(b"[", b"0.5,", b"0.5]"),
    "objects": filled(b'{"type":"user_message","payload":{"content":"x","a":[', b'{"k":0},', b"{}]}}"),
}


@pytest.mark.parametrize("profile", ["netra", "ag-ui"])
def test_a_client_message_past_the_structure_bound_is_not_parsed(profile):
    """Each message here is valid JSON within the byte cap, and past the bound: the profile reads it as "dense", no
    chat, without parsing it. FAILED on the code before: each was parsed (0.3-0.7 s apiece)."""
    decoder = load_profile(profile)
    for name, text in DENSE.items():
        assert len(text) <= SIZE and json.loads(text) is not None, name
        assert decoder.decode_client(text.decode()).kind == "dense", name


def test_the_bound_counts_structural_characters_not_bytes():
    """A chat's request of MAX_CLIENT_STRUCTURE structural characters in all (commas inside its text count too) is
    read as a request; one more makes it dense; 4 MiB of text without them is a request. FAILED on the code before:
    the one past the bound was parsed and read as a request."""
    netra = load_profile("netra")

    def request(content: str) -> str:
        return json.dumps({"type": "user_message", "payload": {"content": content, "thread_id": "t",
                                                               "message_id": "m"}}, separators=(",", ":"))

    own = sum(request("").count(mark) for mark in ",:[{")  # the request's own structure, around its text
    at_bound = request("," * (MAX_CLIENT_STRUCTURE - own))
    assert sum(at_bound.count(mark) for mark in ",:[{") == MAX_CLIENT_STRUCTURE
    assert netra.decode_client(at_bound).kind == "request"
    assert netra.decode_client(request("," * (MAX_CLIENT_STRUCTURE - own + 1))).kind == "dense"
    assert netra.decode_client(request("x" * SIZE)).kind == "request"
