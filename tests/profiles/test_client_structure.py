"""The bound on a client's frame before it is parsed (profiles.MAX_CLIENT_STRUCTURE, `too_dense`): a frame of more
JSON structural characters than that is read as "dense", no chat, and never parsed; one within it is parsed as ever.
The messages here are also the hostile client's of tests/monitors/test_proxy_dense_frames.py."""
from __future__ import annotations

import json

import pytest

from bench.proxy_dense_frames import SIZE, filled  # (~4 MiB, within the proxy's default --max-size)
from harness.profiles import MAX_CLIENT_STRUCTURE, load_profile

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


def request(content: str, **more: object) -> str:
    """A netra chat request (compact JSON) with `content` as its text and `more` beside its payload."""
    return json.dumps({"type": "user_message", "payload": {"content": content, "thread_id": "t", "message_id": "m"},
                       **more}, separators=(",", ":"))


def test_the_bound_counts_structural_characters_outside_strings():
    """A chat's request of MAX_CLIENT_STRUCTURE structural characters outside its strings is read as a request; one
    more makes it dense. FAILED on the code before the bound: the one past it was parsed and read as a request."""
    netra = load_profile("netra")
    own = sum(request("", pad=[]).count(mark) for mark in ",:[{")  # the request's own structure
    zeros = MAX_CLIENT_STRUCTURE - own + 1  # `pad`'s items: one comma fewer than items
    at_bound = request("", pad=[0] * zeros)
    assert sum(at_bound.count(mark) for mark in ",:[{") == MAX_CLIENT_STRUCTURE
    assert netra.decode_client(at_bound).kind == "request"
    assert netra.decode_client(request("", pad=[0] * (zeros + 1))).kind == "dense"
    assert netra.decode_client(request("x" * SIZE)).kind == "request"


# What a real user pastes into a chat: one string each, full of structural characters, quotes and escapes.
CSV = "id,name,amount,note\n" + "1,alice,3.5,\"a, b: [c] {d}\"\n" * 120_000
PASTED_JSON = json.dumps({"rows": [{"id": i, "tags": ["a", "b"], "path": "C:\\x\\"} for i in range(40_000)]})
BACKSLASHES = '\\"' * 400_000 + "," * 200_000  # `\\"`: an escaped backslash and an escaped quote, then commas


@pytest.mark.parametrize("content", [CSV, PASTED_JSON, BACKSLASHES], ids=["csv", "json", "backslashes"])
def test_a_pasted_document_is_one_string_and_its_request_is_parsed(content):
    """Hundreds of thousands of `,` `:` `[` `{` and escaped quotes inside the user's text are not the frame's
    structure: the request is parsed and read as a chat. FAILED with the count taking every character: "dense", and
    the proxy refused a real user's connection for a pasted CSV."""
    text = request(content)
    assert sum(text.count(mark) for mark in ",:[{") > 2 * MAX_CLIENT_STRUCTURE
    frame = load_profile("netra").decode_client(text)
    assert frame.kind == "request"
    assert json.loads(text)["payload"]["content"] == content


def test_many_strings_are_many_values():
    """Strings are values too: a frame of millions of tiny strings is dense, whether between commas or as keys."""
    netra = load_profile("netra")
    assert netra.decode_client(filled(b'{"type":"user_message","a":[', b'"",', b'""]}').decode()).kind == "dense"
    assert netra.decode_client(filled(b'{"type":"user_message","a":{', b'"k":"",', b'"k":""}}').decode()).kind == "dense"
