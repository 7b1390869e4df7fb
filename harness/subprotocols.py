"""WebSocket subprotocol names a user offers (`--subprotocol`, a profile's `subprotocols`): what one may be.

Pure: the targets (every driver's options) and the profiles' model check names here; the transports offer them.
"""
from __future__ import annotations

import re

# RFC 6455 4.1 and 11.3.4: a subprotocol name is a token (RFC 2616 2.2): printable ASCII but separators and spaces.
SUBPROTOCOL_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_SUBPROTOCOL = 128  # characters of one name (the registered ones are under 40)
MAX_SUBPROTOCOLS = 16  # names offered (a browser offers a handful; each is a line of the upgrade request's header)
# The pair `--auth subprotocol` offers (`jwt-auth`, `jwt.<base64url token>`): a name of the user's is neither.
AUTH_SUBPROTOCOL = "jwt-auth"


def subprotocol_problem(name: str) -> str | None:
    """What makes `name` no subprotocol chatprobe offers (one line, the name shown clipped), or None."""
    if not isinstance(name, str) or not name:
        return "'': an empty name (an unset shell variable?)"
    shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
    if len(name) > MAX_SUBPROTOCOL:
        return f"{shown}: a subprotocol name of {len(name):,} characters (at most {MAX_SUBPROTOCOL})"
    if not SUBPROTOCOL_NAME.fullmatch(name):
        return (f"{shown}: not a subprotocol name (RFC 6455: a token of letters, digits and !#$%&'*+-.^_`|~, no space, "
                "comma or other separator; give several names as several flags)")
    if name == AUTH_SUBPROTOCOL or name.startswith("jwt."):
        return (f"{shown}: the token's subprotocols (jwt-auth, jwt.<token>) are offered by --auth subprotocol, with "
                "the token from --token-env, --token-file or --jwt-secret-env")
    return None


def names_problem(names: list[str] | tuple[str, ...]) -> tuple[int, str] | None:
    """The first name of `names` chatprobe would not offer, by its place, and why (subprotocol_problem, a name given
    twice, more than MAX_SUBPROTOCOLS), or None: one check for the flags, a config's list and a profile's."""
    seen: set[str] = set()
    for n, name in enumerate(names):
        problem = subprotocol_problem(name)
        if problem is None and name in seen:
            problem = f"{name!r}: given twice"
        if problem is None and n >= MAX_SUBPROTOCOLS:
            problem = f"more than {MAX_SUBPROTOCOLS} subprotocols offered"
        if problem is not None:
            return n, problem
        seen.add(name)
    return None
