"""Where and how to connect: target options (a typed dataclass), tokens, the checked Target, the embedded agentsim.

Every driver builds its target here (the CLI, the monitor's config file, the Locust user, the pytest plugin); an
error is a ConfigError whose `field` names the option, so each caller names it its own way (`--ca-file`,
`targets.prod.ca_file`).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import SplitResult, urlsplit

from . import redact
from .catalog import builtin_profiles
from .errors import ConfigError
from .subprotocols import names_problem
from .transports import SCHEMES, ConnectSettings, WebSocketChoice
from .transports.base import Compression

if TYPE_CHECKING:
    import argparse

    from agentsim.agui import AguiSim
    from agentsim.server import AgentSim

    from .profiles import Profile
    from .recorder import Recorder
    from .scenario import Scenario

AuthMode = Literal["header", "subprotocol", "none"]

# PyJWT (2.10+) warns, with its own file and source line on stderr, when an HS256 secret is under 32 bytes. The secret
# is the server's (agentsim's development one is 20 bytes): the client that mints with it cannot make it longer, so
# the advice is noise in `chatprobe run`'s output; agentsim, which chooses it, warns about a weak secret itself.
warnings.filterwarnings("ignore", message=r"The HMAC key is \d+ bytes long")

# The command-line flag of each TargetOptions field, for messages.
FLAGS: dict[str, str] = {
    "url": "--target", "name": "--target-name", "profile": "--profile", "auth": "--auth",
    "token_env": "--token-env", "token_file": "--token-file", "jwt_secret_env": "--jwt-secret-env",
    "ca_file": "--ca-file", "client_cert": "--client-cert", "client_key": "--client-key", "insecure": "--insecure",
    "headers": "--header", "header_env": "--header-env",
    "subprotocols": "--subprotocol",
}
# Headers of the user's own, as given: (name, value) for `headers`, (name, environment variable) for `header_env`.
HeaderPairs = tuple[tuple[str, str], ...]
# What a shell calls a variable: a `--header-env`/`--token-env` variable that is not one may be a secret pasted in
# its place.
# (Text, compiled by re where it is used: only a refusal reads it, and a run compiles none at import.)
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_NOT_SHOWN = "named (not shown: it does not read as a variable's name)"


def _reads_as_name(var: str) -> bool:
    """Whether an option's value reads as an environment variable's name, so may be shown in a message: a token or
    secret pasted where its variable's name goes (`--token-env eyJ…`, `--header-env 'X-Key=sk-live-…'`) is not."""
    return re.fullmatch(_ENV_NAME, var) is not None


# RFC 9110 5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# One header (name, ": " and value), and all of them: within what common servers take in a request head (nginx reads
# a line of up to 8 KiB, Node a head of up to 16 KiB).
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS_BYTES = 16 * 1024
# What chatprobe writes itself on every transport; on WebSocket, the handshake's Sec-WebSocket-* too.
OWNED_HEADERS = frozenset({"host", "connection", "upgrade", "content-length", "transfer-encoding"})
# Headers whose value says what any page or client says of itself, never a credential: not registered as secrets, so
# an `Origin` naming the target's own host does not hide the host in every report (the scrubber hides any run of 8
# characters a secret shares with what it shows). The SSE request's own headers that a user may replace (its media
# types, codings and caching: `Accept: application/vnd.ag-ui.event+proto, text/event-stream` hid both media types in
# the very error that names what the server answered, "content type '[REDACTED]', not[REDACTED]") are public too.
# Every other header's value is a secret, whatever its name.
PUBLIC_HEADERS = frozenset({"origin", "user-agent", "accept", "accept-encoding", "cache-control", "content-type"})


def option_error(option: str, message: str) -> ConfigError:
    """A ConfigError about one option: shown with its flag, `field`/`detail` for callers that name it otherwise."""
    message = redact.scrub(message)  # a URL given with credentials or ?token= is shown without them
    return ConfigError(f"{FLAGS.get(option, option)} {message}" if not message.startswith(":") else
                       f"{FLAGS.get(option, option)}{message}", field=option, detail=message.lstrip(": "))


# A `target` label's value given by a person (`--target-name`, a monitor config's target key, the proxy's flag):
# what a Prometheus label and a report name carry well. A label of kilobytes rides on every series of every scrape.
TARGET_NAME_PATTERN = r"^[A-Za-z0-9_.:\[\]-]{1,64}$"


def check_label(value: str | None, option: str, pattern: str = TARGET_NAME_PATTERN) -> str | None:
    """A label value from a flag, as the config files take it; a ConfigError naming the flag otherwise."""
    if value is not None and not re.fullmatch(pattern, value):
        shown = repr(value[:40]) + ("…" if len(value) > 40 else "")
        raise option_error(option, f"{shown}: 1 to 64 letters, digits or {'_.:[]-' if ':' in pattern else '_.-'} "
                                   "(it is a Prometheus label and a report's name)")
    return value


@dataclass(frozen=True)
class TargetOptions:
    """The target as a user gave it (flags, a monitor config entry, Locust options); checked by `make_target`."""

    url: str | None = None  # None: the embedded agentsim
    name: str | None = None
    profile: str | None = None
    auth: AuthMode = "header"
    token_env: str | None = None
    token_file: str | None = None
    jwt_secret_env: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None  # mutual TLS: the client's certificate (PEM), its key beside it or in client_key
    client_key: str | None = None
    insecure: bool = False
    headers: HeaderPairs = field(default=(), repr=False)  # every value a secret: never in a repr
    header_env: HeaderPairs = ()
    subprotocols: tuple[str, ...] | None = None  # None: the profile's (`subprotocols:`), else none


class TokenProvider:
    """A fixed token for every user, or an HS256 JWT minted per virtual user (sub = user id)."""

    def __init__(self, token: str | None = None, jwt_secret: str | None = None, ttl: float = 3600) -> None:
        self._token = token
        self._secret = jwt_secret
        self._ttl = ttl
        self._subject: str | None = None
        # Whatever the server echoes back, no report, log line or metric may show these (harness/redact.py).
        redact.register(token)
        redact.register(jwt_secret)

    def __repr__(self) -> str:  # never show a secret
        return "TokenProvider(<redacted>)"

    @property
    def configured(self) -> bool:
        return self._token is not None or self._secret is not None

    def for_user(self, user_id: str) -> str | None:
        if self._token is not None:
            return self._token
        if self._secret is not None:
            import jwt  # PyJWT: loaded only when tokens are minted

            now = int(time.time())
            minted = jwt.encode({"sub": user_id, "iat": now, "exp": now + int(self._ttl)}, self._secret, algorithm="HS256")
            redact.register(minted, minted=True)
            return minted
        return None

    def subject(self, user_id: str) -> str | None:
        """The user the server will know this virtual user as: the `sub` of the token (minted: the user id; given:
        read from the token, unverified, when it is a JWT), so events of another user are caught (R8) even when the
        server's welcome names nobody."""
        if self._secret is not None and self._token is None:
            return user_id
        if self._token is None:
            return None
        if self._subject is None:
            self._subject = _jwt_subject(self._token) or ""
        return self._subject or None


# A JWT longer than this is read as none (its claims decoded for every connection that carries one: bounded work).
MAX_JWT_CHARS = 16 * 1024


def jwt_claims(token: str) -> dict[str, Any] | None:
    """A JWT's claims, read without its signature (whoever asks holds no key: the client's own token, a proxied
    user's), or None when `token` is no JWT."""
    if not 10 < len(token) <= MAX_JWT_CHARS or token.count(".") != 2:
        return None
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _jwt_subject(token: str) -> str | None:
    sub = (jwt_claims(token) or {}).get("sub")
    return sub if isinstance(sub, str) and sub else None


@dataclass
class Target:
    """Where and how to connect: URL, profile, auth and TLS, and the short name used as the `target` label."""

    url: str
    profile: Profile
    name: str
    tokens: TokenProvider = field(default_factory=TokenProvider)
    auth: str = "header"
    ca_file: str | None = None
    client_cert: str | None = None  # --client-cert / --client-key, checked: shown to a server that asks (mutual TLS)
    client_key: str | None = None
    insecure: bool = False
    no_auth_user_param: bool = False  # agentsim --no-auth: name the user with ?user=
    recorder: Recorder | None = None  # --record: every connection's frames written for `chatprobe check`
    compression: Compression = "none"  # offer permessage-deflate: the scenario's `compression`
    headers: HeaderPairs = field(default=(), repr=False)  # --header / --header-env, checked: sent on every connection
    subprotocols: tuple[str, ...] = ()  # --subprotocol (else the profile's), checked: offered on every WebSocket upgrade
    # The WebSocket client its connections take: picows, until it refuses a valid answer of this server (then the
    # websockets client for the rest of the run); one object shared by the target's copies (dataclasses.replace).
    websocket_client: WebSocketChoice = field(default_factory=WebSocketChoice, repr=False, compare=False)

    @property
    def transport(self) -> str:
        return SCHEMES[urlsplit(self.url).scheme.lower()].transport

    def settings_for(self, user_id: str, connect_timeout: float) -> ConnectSettings:
        url = self.url
        if self.no_auth_user_param:
            url += ("&" if "?" in url else "?") + f"user={user_id}"
        return ConnectSettings(
            url=url, token=self.tokens.for_user(user_id), auth=self.auth, ca_file=self.ca_file,
            client_cert=self.client_cert, client_key=self.client_key, insecure=self.insecure,
            connect_timeout=connect_timeout, compression=self.compression,
            extra_headers=dict(self.headers), subprotocols=self.subprotocols, client=self.websocket_client.client,
        )


def target_label(url: str) -> str:
    """Reduce a server URL to `host:port` for the `target` label: never a path, a query or credentials."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    if port is None:
        scheme = SCHEMES.get(parts.scheme.lower())
        port = scheme.default_port if scheme else None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def check_url(url: str, option: str, schemes: tuple[str, ...] = tuple(SCHEMES)) -> SplitResult:
    """A server URL checked whole (scheme, host, port) before anything connects; a ConfigError about `option`."""
    expected = ", ".join(f"{x}://" for x in schemes)
    # A URL refused is quoted without what may be its password: everything between its scheme's `://` (or its start)
    # and its last '@'. The URLs refused here are those neither urlsplit nor redact's URL pattern reads userinfo from:
    # a scheme missing or mistyped (`user:pw@host`, `wss:/user:pw@host`), a '/', '#', '?' or space unencoded in the
    # password (urlsplit's own error then quotes the password's head as the port, or the whole netloc); so, with an
    # '@', urlsplit's error is not quoted either.
    at = url.rfind("@")
    if at >= 0:
        start = url.find("://", 0, at)
        url_shown = f"{url[:start + 3 if start >= 0 else 0]}{redact.REDACTED}{url[at:]}"
    else:
        url_shown = url
    shown = repr(url_shown) if len(url_shown) <= 120 else repr(url_shown[:120]) + "…"  # not a megabyte URL whole
    if not url.strip():
        raise option_error(option, f"{shown}: is empty (expected a {expected} URL); leave the option out to use the "
                                   "embedded server")
    if any(c < " " or c == "\x7f" for c in url):
        # urlsplit drops tabs and line breaks (WHATWG), so the URL checked was not the URL sent: a request line of
        # its own (injection), or a typo's pasted newline. Refused, as a header value with one is.
        raise option_error(option, f"{shown}: a URL has no line break, tab, NUL or other control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        why = str(exc) if at < 0 else "its port is not a number from 1 to 65535" if "port" in str(exc).lower() \
            else "its host cannot be read"
        raise option_error(option, f"{shown}: not a valid URL ({why})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise option_error(option, f"{shown}: expected a {expected} URL with a host")
    if parts.port == 0:  # no server listens there: every chat would be `unreachable` (exit 3), not the typo it is
        raise option_error(option, f"{shown}: port 0 is no server's port (1 to 65535)")
    if parts.fragment or url.endswith("#"):  # a WebSocket URI has none (RFC 6455 3), and no server sees one
        raise option_error(option, f"{shown}: a server URL has no #fragment")
    if not host_name_fits(parts.hostname):
        raise option_error(option, f"{shown}: not a valid host name (labels of 1 to 63 characters, 253 in all)")
    return parts


def host_name_fits(host: str) -> bool:
    """Whether a URL's host is one DNS could resolve the length of (labels of 1 to 63 characters, 253 in all), or
    an IPv6 address."""
    return ":" in host or (len(host) <= 253 and all(0 < len(label) <= 63 for label in host.rstrip(".").split(".")))


def check_not_empty(opts: TargetOptions, *options: str) -> None:
    """An option given an empty value (`--token-env "$UNSET"` in CI, `token_env: ""` in a file) is a usage error
    naming it, as an empty report path is: taken as not given, a run went on with CHATPROBE_TOKEN's token instead of
    the one named (another environment's, perhaps), with no token at all, with the system's CAs for the private one
    asked for, or with the default profile."""
    for option in options:
        value = getattr(opts, option)
        if value is not None and not value.strip():
            what = "an empty variable name" if option.endswith("_env") else "an empty path" if option != "profile" \
                else "an empty name"
            raise option_error(option, f": {what} (an unset shell variable?)")


def check_credentials(opts: TargetOptions) -> None:
    """The credentials flags given where no token of theirs is sent (the embedded agentsim mints its own), checked
    as read_token reads them: a --token-file that is not there or cannot be read, a --token-env naming a variable
    that is not set, two sources or an empty value is the usage error it is against a server, never ignored (a run
    without --target by mistake passed, its credentials never looked at)."""
    check_not_empty(opts, "token_file", "token_env", "jwt_secret_env")
    if opts.token_file or opts.token_env or opts.jwt_secret_env:
        read_token(opts)


def read_token(opts: TargetOptions) -> TokenProvider:
    """The token source the options name: a file, a variable, a secret to mint per-user JWTs from, or none."""
    check_not_empty(opts, "token_file", "token_env", "jwt_secret_env")
    # One source: two given are a usage error (which one the run used, no output would say), and one given is taken
    # over a default variable set in the environment (CHATPROBE_TOKEN exported in CI must not outrank the
    # --jwt-secret-env on the command line).
    given = [option for option in ("token_file", "token_env", "jwt_secret_env") if getattr(opts, option)]
    if len(given) > 1:
        raise option_error(given[1], f"is given beside {FLAGS[given[0]]}: give one source of credentials")
    if opts.token_file:
        try:
            from .yamlfile import read_text_file

            # A byte order mark first (Windows Notepad's "UTF-8 with BOM"), as every file chatprobe reads ignores it.
            token = read_text_file(opts.token_file, "--token-file", limit=64 * 1024).removeprefix("\ufeff").strip()
        except ConfigError as exc:
            raise ConfigError(str(exc), field="token_file", detail=str(exc).removeprefix("--token-file ")) from None
        if not token:
            raise option_error("token_file", f"{opts.token_file}: the file is empty")
        _one_line(token, "token_file", opts.token_file)
        return TokenProvider(token=token)
    # A bearer token, else a secret to mint one per user: named by the option, or found in the default variable.
    for option, named, default, kind in (("token_env", opts.token_env, "CHATPROBE_TOKEN", "token"),
                                         ("jwt_secret_env", opts.jwt_secret_env, "CHATPROBE_JWT_SECRET", "jwt_secret")):
        var = named or (default if os.environ.get(default) and not given else None)
        if var:
            value = os.environ.get(var)
            if kind == "token" and value:
                # Stripped as a --token-file's is (a secret store's value often ends in a line break): a variable of
                # only blanks is an empty one, never sent as "Bearer " to be refused by every server.
                value = value.strip()
            if not value:
                raise option_error(option, f"{var}: the variable is not set or empty" if _reads_as_name(var) else
                                   f"the variable {_NOT_SHOWN} is not set or empty")
            if kind == "token":
                _one_line(value, option, var)
            return TokenProvider(token=value) if kind == "token" else TokenProvider(jwt_secret=value)
    return TokenProvider()


def _one_line(token: str, option: str, where: str) -> None:
    """A token goes into a header line (Authorization, Sec-WebSocket-Protocol): a line break or another control
    character in it would write header lines of its own (header injection), and a character that is not ASCII is no
    header text, so either is a usage error. Never shown."""
    if any(c < " " or c == "\x7f" for c in token):
        raise option_error(option, f"{where}: the token holds a line break or another control character "
                                   "(a token is one line of printable characters)")
    # No header carries it as text (a bearer token is ASCII, RFC 6750): sent as raw UTF-8 over WebSocket, refused by
    # the SSE client at each chat's request (every chat a `send_failed` error). Mostly a character pasted with it.
    if not token.isascii():
        raise option_error(option, f"{where}: the token holds a character that is not ASCII (a no-break or "
                                   "zero-width space pasted with it?); a token is one line of printable ASCII")


def parse_header_flags(values: list[str] | None, option: str) -> HeaderPairs:
    """`--header 'Name: value'` (option "headers") or `--header-env Name=VAR` ("header_env"), each as given, as
    (name, value or variable) pairs; checked by `make_target`. A text that is not of that form is never shown (it may
    be a secret pasted alone): its place among the flags is."""
    sep, form = (":", "'Name: value'") if option == "headers" else ("=", "Name=VAR")
    out = []
    for n, text in enumerate(values or (), 1):
        name, found, value = text.partition(sep)
        if not found:
            raise _header_error(option, None, f"#{n}: expected {form}, found no {sep!r} (the text is not shown)")
        out.append((name, value))
    return tuple(out)


def flag_named(exc: ConfigError, prefix: str, fields: tuple[str, ...] = ("headers", "header_env")) -> str:
    """The message of `exc` with the flags of the options the driver has named as the driver spells them
    (`--chatprobe-header`, `--chatprobe-target-name` for Locust and pytest, whose flags carry a prefix): `fields`,
    the TargetOptions fields the driver has a flag for, wherever the message names one (the option's own, and a hint
    such as "give --auth none" or "offer a subprotocol with --subprotocol NAME"); the other options' messages as they
    are."""
    if exc.field not in fields:
        return str(exc)
    text = str(exc)
    for option in fields:
        flag = FLAGS[option]
        text = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", prefix + flag[2:], text)
    return text


def _header_error(option: str, name: str | None, problem: str) -> ConfigError:
    """A ConfigError about one header, shown by its name and never its value (`--header 'X-Api-Key: ...': problem`),
    with `key` the name so that a config file's error is found on that header's line. (`Authorization: word word`
    would read as a credential to redact.scrub: the elided value keeps the problem readable.)"""
    detail = problem
    if name is not None:
        detail = f"'{redact.printable(name)[:100]}{': ' if option == 'headers' else '='}...': {problem}"
    detail = redact.scrub(detail)
    return ConfigError(f"{FLAGS[option]} {detail}", field=option, detail=detail, key=name)


def read_headers(opts: TargetOptions, transport: str) -> HeaderPairs:
    """The headers of `opts` (`header_env` read from the environment), checked for what a header line may be and what
    chatprobe sends itself on `transport`; every value is registered as a secret (never shown, as a token)."""
    given = [("headers", name, value) for name, value in opts.headers]
    for name, var in opts.header_env:
        if not var.strip():
            raise _header_error("header_env", name, "names no environment variable (Name=VAR)")
        value = os.environ.get(var)
        if not value:
            shown = var if _reads_as_name(var) else _NOT_SHOWN
            raise _header_error("header_env", name, f"the variable {shown} is not set or empty")
        given.append(("header_env", name, value))
    seen: dict[str, str] = {}
    total = 0
    out = []
    for option, name, value in given:
        value = value.strip(" \t")  # the optional whitespace around a field value (RFC 9110 5.5), as a server drops it
        if not _HEADER_NAME.fullmatch(name):
            raise _header_error(option, name, "not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only: "
                                              "no space, colon or control character)")
        if "\r" in value or "\n" in value:
            raise _header_error(option, name, "the value holds a line break (CR or LF), which would write header "
                                              "lines of its own (header injection); a value is one line")
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise _header_error(option, name, "the value holds a NUL or another control character; a value is "
                                              "printable text")
        if not value.isascii():
            raise _header_error(option, name, "the value holds a character that is not ASCII (percent-encode it)")
        size = len(name) + 2 + len(value)
        total += size
        if size > MAX_HEADER_BYTES or total > MAX_HEADERS_BYTES:
            raise _header_error(option, name, f"over the size bound ({MAX_HEADER_BYTES:,} bytes a header, name and "
                                              f"value, {MAX_HEADERS_BYTES:,} for all of them)")
        low = name.lower()
        if low in seen:
            raise _header_error(option, name, f"given twice (header names are case-insensitive: also as '{seen[low]}')")
        if low in OWNED_HEADERS or (transport == "websocket" and low.startswith("sec-websocket-")):
            hint = "; offer a subprotocol with --subprotocol NAME (repeatable)" \
                if low == "sec-websocket-protocol" else ""
            raise _header_error(option, name, f"chatprobe sends this header itself on a {transport} connection{hint}")
        if low == "authorization" and opts.auth != "none":
            raise _header_error(option, name, "chatprobe sends its token in this header (or, with --auth subprotocol, "
                                              "as a subprotocol); for a bearer token use --token-env or --token-file, "
                                              "or give --auth none to send an Authorization of your own")
        seen[low] = name
        if low not in PUBLIC_HEADERS:
            redact.register(value)  # whatever the server echoes, no output shows it
        out.append((name, value))
    return tuple(out)


def read_subprotocols(names: tuple[str, ...] | list[str], option: str = "subprotocols") -> tuple[str, ...]:
    """The subprotocols a user offers, checked: RFC 6455 tokens, none given twice, at most MAX_SUBPROTOCOLS; a
    ConfigError naming the option (its `key`, the name's place among them, finds a config file's line)."""
    if (found := names_problem(names)) is not None:
        n, problem = found
        problem = redact.scrub(problem)
        raise ConfigError(f"{FLAGS.get(option, option)} {problem}", field=option, detail=problem, key=n)
    return tuple(names)


def target_profile(opts: TargetOptions, default_profile: str | None = None) -> Profile:
    """The profile a target of `opts` speaks (`--profile`, else the scenario's, else netra), loaded and checked."""
    check_not_empty(opts, "profile")
    try:
        from .profiles import load_profile  # pydantic models: loaded when a target is built, not at start-up

        return load_profile(opts.profile or default_profile or "netra")
    except ConfigError as exc:
        # Named by its flag also where the file's reader named only the file (a directory, /dev/zero, a FIFO).
        message = str(exc) if str(exc).startswith("--profile") else f"--profile {exc}"
        raise ConfigError(message, field="profile", detail=message.removeprefix("--profile ")) from None


# The TLS options, by their TargetOptions names: what a ws:// or http:// target never reads.
TLS_OPTIONS = ("ca_file", "client_cert", "client_key", "insecure")


def check_tls_fits(opts: TargetOptions, target: str, hint: str) -> None:
    """TLS options given for `target` (a URL or the embedded server), which speaks no TLS: a usage error naming the
    option and the target, not options silently ignored (a ws:// typed for wss:// would run unverified while the user
    believes its certificate checked), as the proxy refuses its --upstream-ca-file beside a ws:// upstream."""
    for option in TLS_OPTIONS:
        if getattr(opts, option):
            raise option_error(option, f": is for a wss:// or https:// target; {target} speaks no TLS ({hint})")


def make_target(opts: TargetOptions, tokens: TokenProvider, default_profile: str | None = None, *,
                url: str | None = None, transports: tuple[str, ...] | None = None,
                stand_in: bool = False) -> Target:
    """The checked Target for `url` (default `opts.url`); `transports` limits what a driver can speak. `stand_in`:
    `url` is not the server's (a placeholder of its transport, to check the rest against before the server is
    known): whether it speaks TLS is not checked."""
    url = opts.url if url is None else url
    if url is None:
        raise option_error("url", ": no URL given")
    check_label(opts.name, "name")
    profile = target_profile(opts, default_profile)
    schemes = tuple(s for s, v in SCHEMES.items() if transports is None or v.transport in transports)
    parts = check_url(url, "url", schemes)
    if parts.username or parts.password:
        raise option_error("url", ": put credentials in --token-env or --token-file, not in the URL")
    transport = SCHEMES[parts.scheme].transport
    if parts.scheme in ("ws", "http") and not stand_in and any(getattr(opts, o) for o in TLS_OPTIONS):
        check_tls_fits(opts, redact.clean(url, 120), f"did you mean {parts.scheme}s://?")  # (cleaned only then)
    if transport not in profile.transports:
        raise option_error("url", f"{parts.scheme}:// means {transport}, but profile {profile.name!r} is spoken over "
                                  f"{' or '.join(profile.transports)} only")
    if opts.auth == "subprotocol" and not profile.auth_subprotocol:
        raise option_error("auth", f"subprotocol: profile {profile.name!r} says its servers do not take the token as "
                                   "a subprotocol (auth_subprotocol: false); use --auth header")
    if transport == "sse" and opts.auth == "subprotocol":
        raise option_error("auth", "subprotocol is for WebSocket targets; SSE sends the token as an Authorization "
                                   "header")
    if opts.subprotocols and transport == "sse":
        raise option_error("subprotocols", f"is for WebSocket targets (ws://, wss://): {parts.scheme}:// is SSE, whose "
                                           "HTTP requests have no subprotocol to offer")
    subprotocols = read_subprotocols(opts.subprotocols) if opts.subprotocols is not None else \
        tuple(profile.subprotocols) if transport == "websocket" else ()
    for secret in redact.credentials_of((), subprotocols) if subprotocols else ():
        # A name that carries a credential (Kubernetes' `base64url.bearer.authorization.k8s.io.<token>`), as the
        # proxy and a HAR's offered subprotocols are read: whatever the server echoes, no output shows it.
        redact.register(secret)
    headers = read_headers(opts, transport)
    check_ca_file(opts)
    check_client_cert(opts)
    if not parts.path and profile.path:
        url = url.rstrip("/") + profile.path
    return Target(url=url, profile=profile, name=opts.name or target_label(url), tokens=tokens,
                  auth=opts.auth if tokens.configured else "none", ca_file=opts.ca_file,
                  client_cert=opts.client_cert, client_key=opts.client_key, insecure=opts.insecure, headers=headers,
                  subprotocols=subprotocols)


def check_ca_file(opts: TargetOptions) -> None:
    """The CA file of `opts` loaded as every connection will load it: not there, not a regular file or not a PEM bundle
    is a usage error naming it and its option."""
    check_not_empty(opts, "ca_file")
    if opts.ca_file:
        try:
            regular = Path(opts.ca_file).is_file()
        except OSError as exc:  # a name too long for a file (ENAMETOOLONG), ...: a usage error, never a traceback
            raise option_error("ca_file", f"{redact.clean(opts.ca_file, 100)}: {exc.strerror or exc}") from None
        if not regular:
            raise option_error("ca_file", f"{opts.ca_file}: " + ("not a regular file" if os.path.lexists(opts.ca_file)
                                                                  else "no such file"))
        from .transports.base import MAX_PEM_FILE, pem_too_big

        try:
            size = os.path.getsize(opts.ca_file)
        except OSError as exc:  # (gone since: as load_verify_locations would say it)
            raise option_error("ca_file", f"{opts.ca_file}: {exc.strerror or exc}") from None
        if size > MAX_PEM_FILE:
            raise option_error("ca_file", f"{opts.ca_file}: {pem_too_big(size)}")
        import ssl  # here, not at the top: `--help` and `list` load no TLS library (~10 ms of their start-up)

        try:
            ssl.create_default_context(cafile=opts.ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise option_error("ca_file", f"{opts.ca_file}: not a PEM bundle of CA certificates ({exc})") from None


def check_client_cert(opts: TargetOptions) -> None:
    """The client certificate and key of `opts` loaded as every connection will load them: a file that is not there,
    holds no certificate or key, a key that is not the certificate's or is encrypted is a usage error naming the file
    and its option (never a prompt for a passphrase, never the key's content)."""
    check_not_empty(opts, "client_cert", "client_key")
    if opts.client_key and not opts.client_cert:
        raise option_error("client_key", f"{opts.client_key}: is the key of a client certificate: give the "
                                         "certificate with --client-cert")
    if not opts.client_cert:
        return
    from .transports.base import client_cert_problem

    try:
        problem = client_cert_problem(opts.client_cert, opts.client_key)
    except ValueError as exc:  # a path with a NUL in it
        problem = "client_cert", str(exc)
    if problem is not None:
        option, why = problem
        path = opts.client_cert if option == "client_cert" else opts.client_key or opts.client_cert
        raise option_error(option, f"{redact.clean(path, 200)}: {why}")


def check_scenario_fits(scenario: Scenario, target: Target) -> None:
    """A scenario the target's dialect or transport cannot carry is a usage error before the run, not failed chats."""
    profile = target.profile
    if not scenario.carried_by(profile.carries):
        hint = "" if profile.dialect or profile.name in builtin_profiles() else (
            f" (a profile of your own that varies one of these says so: `dialect: {(scenario.dialects or ['netra'])[0]}`"
            ", docs/profiles.md)")
        raise ConfigError(f"scenario {scenario.name!r}: field 'dialects': written for "
                          f"{', '.join(scenario.dialects or [])}; {'an' if profile.carries[:1] in 'aeiou' else 'a'} "
                          f"{profile.carries} server cannot carry it{hint}",
                          field="dialects")
    if target.transport == "sse":
        if scenario.parallel_chats > 1:
            raise ConfigError(f"scenario {scenario.name!r}: field 'parallel_chats': {scenario.parallel_chats} chats "
                              f"in flight per user cannot be carried over SSE ({target.url.split(':')[0]}://: one "
                              "stream per chat); raise `users` instead", field="parallel_chats")
        from .scenario import RawStep

        if scenario.steps and any(isinstance(step, RawStep) for step in scenario.steps):
            raise ConfigError(f"scenario {scenario.name!r}: field 'steps': `send_raw:` needs a WebSocket target "
                              "(over SSE every request is its own stream)", field="steps")


# Descriptors kept from the open-file limit for what is not a connection: the interpreter's own files, a report being
# written, the embedded server's listening sockets, a --record's file being written (harness/recorder.py opens a
# recording's file for each flush and closes it there: its 1,000 files are on disk, never open at once).
FILES_KEPT = 100


def connections_at_once(scenario: Scenario) -> tuple[int, str]:
    """The most connections the scenario holds open at once, and the field that says so: one per user playing (closed
    model: `concurrency`, else `users`; stages: the most users of a stage), one per chat in flight (open model)."""
    if scenario.arrival_rate is not None or (scenario.stages and scenario.stages[0].rate is not None):
        return scenario.max_in_flight, "max_in_flight"
    if scenario.stages:
        return max(st.users or 0 for st in scenario.stages), "stages"
    if scenario.concurrency is not None and scenario.concurrency < scenario.users:
        return scenario.concurrency, "concurrency"
    return scenario.users, "users"


def open_files_short(need: int) -> int | None:
    """None when this process may open `need` files at once (its soft open-file limit raised up to the hard one if
    need be), else the most it may open: the one reading of the limit for `run` and `monitor` alike."""
    try:
        import resource
    except ImportError:  # not on POSIX: no limit to read
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or need <= soft:
        return None
    if hard == resource.RLIM_INFINITY or need <= hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return None
    return soft if hard == resource.RLIM_INFINITY else max(soft, hard)


def check_open_files(scenario: Scenario, *, embedded: bool) -> None:
    """A scenario whose connections at once need more file descriptors than the process may open (ulimit -n, its soft
    limit raised up to the hard one if need be) is a usage error before the run: each connection past the limit would
    fail as the client's own `Too many open files`, never reaching the server, a load test of nothing. The embedded
    agentsim serves the same connections from this process: two descriptors each."""
    n, where = connections_at_once(scenario)
    each = 2 if embedded else 1
    kept = FILES_KEPT
    need = n * each + kept
    if (limit := open_files_short(need)) is None:
        return
    most = max(0, (limit - kept) // each)
    served = ", each also served from this process by the embedded agentsim (two files a connection)" if embedded else ""
    fix = {"users": f"set `concurrency: {most:,}` or less (users playing at once) or fewer `users`",
           "concurrency": f"set `concurrency: {most:,}` or less",
           "stages": f"keep every stage's `users` at {most:,} or less",
           "max_in_flight": f"set `max_in_flight: {most:,}` or less"}[where]
    fix = f"{fix}, or raise the limit" if most else "raise the limit (not even one connection fits)"
    raise ConfigError(f"scenario {scenario.name!r}: field {where!r}: {n:,} connections open at once{served} need "
                      f"{need:,} open files ({kept:,} kept for the process's own), and this process may open "
                      f"{limit:,} (`ulimit -n`): {fix}", field=where)


# The dialects the embedded agentsim speaks (a run with no --target in another one is a usage error).
EMBEDDED_DIALECTS = frozenset({"netra", "ag-ui"})


# -- the command line's view of the same options ---------------------------------------------------------------

def add_target_args(p: argparse.ArgumentParser) -> None:
    import argparse  # (the command line's alone: a driver that builds its options otherwise loads none of it)

    class SecretGiven(argparse.Action):
        """A secret given on the command line where chatprobe takes the name of the variable that holds it: refused,
        the value never shown."""

        def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
            super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            parser.error(f"{option_string} takes no secret here (a command line shows in `ps`): put it in an "
                         "environment variable and give its name, --jwt-secret-env VAR (the value given is not shown)")

    g = p.add_argument_group("target")
    g.add_argument("--target", metavar="URL", help="ws://, wss://, http(s):// (SSE) URL of the server; "
                   "omitted: start the embedded agentsim on a free loopback port")
    g.add_argument("--target-name", metavar="NAME", help="short name for reports and the `target` label, "
                   "1 to 64 of A-Z a-z 0-9 _.:[]- (default host:port)")
    g.add_argument("--profile", metavar="NAME|FILE", help="wire-format profile: netra (default), ag-ui, or a YAML file")
    g.add_argument("--auth", choices=("header", "subprotocol", "none"), default="header",
                   help="send the token as an Authorization header (default), as the subprotocols jwt-auth and "
                        "jwt.<base64url(token)>, or not at all (none: an Authorization --header of your own)")
    g.add_argument("--token-env", metavar="VAR", default=None,
                   help="read a bearer token from this environment variable (default CHATPROBE_TOKEN if set)")
    g.add_argument("--token-file", metavar="FILE", help="read a bearer token from this file")
    g.add_argument("--jwt-secret-env", metavar="VAR", default=None,
                   help="mint an HS256 JWT per virtual user with the secret in this variable "
                        "(default CHATPROBE_JWT_SECRET if set)")
    # agentsim's own flag, as a user of `chatprobe sim` types it here: argparse took it for the start of
    # --jwt-secret-env and the secret for a variable's name, which "the variable is not set" then showed.
    g.add_argument("--jwt-secret", nargs="?", action=SecretGiven, help=argparse.SUPPRESS)
    g.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify a wss:// / https:// server (beside a ws:// "
                   "or http:// target, or none, a usage error: those speak no TLS)")
    g.add_argument("--client-cert", metavar="PEM", help="client certificate to show a wss:// / https:// server that "
                   "asks for one (mutual TLS); its private key in the same file or in --client-key")
    g.add_argument("--client-key", metavar="PEM", help="the unencrypted private key of --client-cert, when not in its "
                   "file")
    g.add_argument("--insecure", action="store_true", help="do not verify a wss:// / https:// server's TLS "
                   "certificate (as the other TLS options, a usage error beside a ws:// or http:// target)")
    g.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                   help="send this HTTP header with every connection's request (repeatable); its value is treated as "
                        "a secret, but a command line shows in `ps`: give a secret with --header-env")
    g.add_argument("--header-env", action="append", metavar="NAME=VAR",
                   help="send the header NAME with the value of the environment variable VAR (repeatable)")
    g.add_argument("--subprotocol", action="append", metavar="NAME",
                   help="offer this WebSocket subprotocol at the upgrade (repeatable, in order of preference; "
                        "overrides the profile's `subprotocols`); with --auth subprotocol the token's jwt-auth pair "
                        "follows")


def options_from_args(args: Any) -> TargetOptions:
    """The TargetOptions of parsed `add_target_args` flags."""
    return TargetOptions(url=args.target, name=args.target_name, profile=args.profile, auth=args.auth,
                         token_env=args.token_env, token_file=args.token_file, jwt_secret_env=args.jwt_secret_env,
                         ca_file=args.ca_file, client_cert=args.client_cert, client_key=args.client_key,
                         insecure=args.insecure,
                         headers=parse_header_flags(args.header, "headers"),
                         header_env=parse_header_flags(args.header_env, "header_env"),
                         subprotocols=tuple(args.subprotocol) if args.subprotocol is not None else None)


@contextlib.asynccontextmanager
async def embedded_sim(faults: list[str], seed: int | None, protocol: str = "netra",
                       ) -> AsyncIterator[tuple[AgentSim | AguiSim, TokenProvider]]:
    """The reference server on a free loopback port, with a fresh secret the harness mints tokens from, speaking
    `protocol` (a dialect of EMBEDDED_DIALECTS): netra over WebSocket, or ag-ui (its `url` is the HTTP POST + SSE
    endpoint; `ws_url` carries the same events over WebSocket)."""
    import secrets  # here, not at the top: `--help` and `list` load no hmac and hashlib (OpenSSL's digests)

    from agentsim.agui import AguiSim
    from agentsim.faults import FaultSpecError, parse_fault
    from agentsim.server import AgentSim, SimConfig

    secret = secrets.token_urlsafe(32)
    try:
        config = SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think="0.005-0.03",
                           tool_latency="0.002-0.01", seed=seed, faults=[parse_fault(f) for f in faults],
                           protocol=protocol)
        sim: AgentSim | AguiSim = AguiSim(config) if protocol == "ag-ui" else AgentSim(config)
    except FaultSpecError as exc:
        raise ConfigError(f"--sim-fault: {exc}", field="sim_fault", detail=str(exc)) from None
    await sim.start()
    try:
        yield sim, TokenProvider(jwt_secret=secret)
    finally:
        await sim.stop()
