"""Flags and files that looked valid but turned into a verdict, a traceback, memory or an injected header: each is a
usage error (exit 2, one line naming the flag or the file, line and field) before anything connects or is read."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_ux import run_cli

NETRA = Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml"


def one_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("value", ["", "null", "~"])
def test_an_empty_objective_value_is_refused_rather_than_dropping_the_gate(value):
    # An unset $VAR in CI: `--objective passed_ratio.min=$MIN` must not remove the objective (the run would pass).
    one_error(run_cli("run", "basic", "--objective", f"passed_ratio.min={value}"), "--objective", "value is needed")


@pytest.mark.parametrize("field, yaml_text", [
    ("expect.deadline", "expect: {deadline: 0}"),
    ("expect.first_event_limit", "expect: {first_event_limit: 0s}"),
    ("connect_timeout", "connect_timeout: 0"),
    ("max_duration", "max_duration: 0s"),
])
def test_a_zero_wait_or_limit_is_a_usage_error_not_a_failed_run(tmp_path, field, yaml_text):
    scenario = tmp_path / "zero.yaml"
    scenario.write_text(f"name: zero\n{yaml_text}\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:2", f"field '{field}'", "more than 0")


@pytest.mark.parametrize("url, needle", [
    ("ws://127.0.0.1:9/ws#frag", "fragment"),
    ("ws://" + "a" * 64 + ".example/ws", "host name"),
])
def test_a_target_no_connection_could_use_is_refused(url, needle):
    one_error(run_cli("run", "basic", "--target", url), "--target", needle)


def test_a_report_flag_never_overwrites_the_scenario_or_profile_it_reads(tmp_path):
    scenario = tmp_path / "mine.yaml"
    scenario.write_text("name: mine\n")
    one_error(run_cli("run", str(scenario), "--json", str(scenario)), "--json", "a scenario, profile or token")
    assert scenario.read_text() == "name: mine\n"
    profile = tmp_path / "p.yaml"
    profile.write_text(NETRA.read_text())
    recording = tmp_path / "r.jsonl"
    recording.write_text('{"t": 1.0, "conn": "c", "dir": "recv", "frame": "{}"}\n')
    one_error(run_cli("check", str(recording), "--profile", str(profile), "--html", str(profile)), "--html")
    assert profile.read_text() == NETRA.read_text()


def test_check_max_size_past_any_read_size_is_refused(tmp_path):
    recording = tmp_path / "r.jsonl"
    recording.write_text('{"t": 1.0, "conn": "c", "dir": "recv", "frame": "{}"}\n')
    one_error(run_cli("check", str(recording), "--max-size", "4398046511104MiB"), "--max-size")


@pytest.mark.parametrize("template", ["{content:>900000000}", "{content.upper}", "{content!r}", "{nope}", "x {"])
def test_a_request_template_is_plain_placeholders_only(tmp_path, template):
    # str.format's language ran per chat: gigabytes for one padded field, a traceback for an attribute.
    profile = tmp_path / "p.yaml"
    profile.write_text(NETRA.read_text().replace('content: "{content}"', f'content: "{template}"'))
    assert template in profile.read_text()
    one_error(run_cli("run", "basic", "--profile", str(profile), "--target", "ws://127.0.0.1:9/ws"),
              f"{profile}:", "field 'request'")


@pytest.mark.parametrize("old, new, field", [
    ('lookup: ["", payload, data]', 'lookup: ["", payload, data, "' + "a." * 5000 + 'x"]', "lookup"),
    ("  run_id: [run_id]", "  run_id: [" + ", ".join(f"r{i}" for i in range(40)) + "]", "fields.run_id"),
])
def test_a_profile_cannot_make_a_decoder_of_millions_of_lines(tmp_path, old, new, field):
    profile = tmp_path / "p.yaml"
    text = NETRA.read_text()
    assert old in text
    profile.write_text(text.replace(old, new))
    one_error(run_cli("run", "basic", "--profile", str(profile), "--target", "ws://127.0.0.1:9/ws"),
              f"field '{field}'")


def test_a_token_with_a_line_break_never_reaches_the_handshake(tmp_path):
    # A raw listener: were the token written, its second line would arrive as a header of its own. Nothing accepts
    # while the CLI runs: the kernel completes any connection into the listen backlog, where the non-blocking accepts
    # below find it (and what was sent on it) once the CLI has exited. (An accept thread with a timeout waited out its
    # whole 10 s whenever, as here, nothing connected.)
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text("abc123secret\nX-Injected: yes\n")
    try:
        for proc in (run_cli("run", "basic", "--target", f"ws://127.0.0.1:{port}/ws",
                             env={"CHATPROBE_TOKEN": "abc123secret\r\nX-Injected: yes"}),
                     run_cli("run", "basic", "--target", f"ws://127.0.0.1:{port}/ws", "--token-file", str(token_file))):
            err = one_error(proc, "line break")
            assert "abc123secret" not in err and "abc123secret" not in proc.stdout
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            with conn:
                conn.settimeout(5)
                try:
                    seen.append(conn.recv(65536))
                except OSError as exc:
                    seen.append(repr(exc).encode())
    finally:
        listener.close()
    assert not seen  # refused before any connection


@pytest.mark.parametrize("token", ["abc123\u200bsecret", "abc123secret\u00a0x", "abc123\u2028secret"])
@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_a_token_that_is_not_ascii_is_refused_before_any_connection(tmp_path, token, scheme):
    """A token pasted with a zero-width or no-break space, or a typographic character: no header can carry it as
    text (a bearer token is ASCII, RFC 6750). It went out as raw UTF-8 over WebSocket (the server's refusal, exit 2,
    "check --token-env") and, over SSE, failed every chat as `send_failed`, "the connection closed before the message
    could be sent" (exit 1): a usage error naming the flag, as for a header's value, the token never shown."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    target = f"{scheme}://127.0.0.1:{port}/" + ("ws" if scheme == "ws" else "agent")
    profile = ["--profile", "ag-ui"] if scheme == "http" else []
    try:
        for proc, flag in ((run_cli("run", "basic", "--target", target, *profile, env={"CHATPROBE_TOKEN": token}),
                            "--token-env"),
                           (run_cli("run", "basic", "--target", target, *profile, "--token-file", str(token_file)),
                            "--token-file")):
            err = one_error(proc, flag, "not ASCII")
            assert "abc123" not in err and "abc123" not in proc.stdout
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing connected (see the test above)
            listener.accept()[0].close()
    finally:
        listener.close()


@pytest.mark.parametrize("old, new, field", [
    ("fields:\n", "fields:\n  type: []\n", "fields.type"),
    ("  agent_started: [agent_started]", "  agent_started: [agent_started, '']", "roles"),
])
def test_a_profile_that_could_never_see_an_event_is_refused(tmp_path, old, new, field):
    profile = tmp_path / "p.yaml"
    text = NETRA.read_text()
    assert old in text
    profile.write_text(text.replace(old, new, 1))
    one_error(run_cli("run", "basic", "--profile", str(profile), "--target", "ws://127.0.0.1:9/ws"), f"field '{field}")


def test_a_forbidden_character_in_yaml_is_named_with_its_line(tmp_path):
    scenario = tmp_path / "nul.yaml"
    scenario.write_text("name: x\nusers: 1\nmessage: \"a\x00b\"\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:3", "U+0000")


def test_a_path_that_is_there_but_no_file_is_not_called_missing(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    err = one_error(run_cli("check", str(fifo)), "not a regular file")
    assert "no such" not in err
    err = one_error(run_cli("run", "basic", "--target", "wss://127.0.0.1:9/ws", "--ca-file", "/dev/null"),
                    "--ca-file", "not a regular file")
    assert "no such" not in err


def test_a_scenario_its_target_cannot_carry_names_the_file_line_and_field(tmp_path):
    # A user's scenario written for another dialect, and a built-in one: each names its file and the field's line.
    scenario = tmp_path / "agui_only.yaml"
    scenario.write_text("name: agui_only\nusers: 1\nmessage: hi\ndialects: [ag-ui]\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:4:", "field 'dialects'", "netra server cannot carry it")
    one_error(run_cli("run", "reconnection", "--profile", "ag-ui"), "scenarios/reconnection.yaml:4:",
              "field 'dialects'")
    # …and what SSE cannot carry, on the field's own line
    parallel = tmp_path / "parallel.yaml"
    parallel.write_text("name: parallel\nusers: 1\nmessage: hi\nparallel_chats: 2\n")
    one_error(run_cli("run", str(parallel), "--profile", "ag-ui"), f"{parallel}:4:", "field 'parallel_chats'")
    probe = tmp_path / "probe.yaml"
    probe.write_text("name: probe\nsteps:\n  - chat: {message: hi}\n  - send_raw: nope\n")
    one_error(run_cli("run", str(probe), "--profile", "ag-ui"), f"{probe}:3:", "field 'steps'", "WebSocket")


@pytest.mark.parametrize("yaml_text, line, field", [
    ("message: a\nmessages: [b, c]", 2, "message"),
    ("messages: [b, c]\nmessage: a", 3, "message"),
    ("chats_per_user: 3\nsteps:\n  - chat: {message: hi}", 2, "chats_per_user"),
    ("steps:\n  - chat: {message: hi}\nparallel_chats: 2", 4, "parallel_chats"),
])
def test_a_key_the_scenario_would_never_read_is_refused(tmp_path, yaml_text, line, field):
    # docs/scenarios.md: `messages` is used instead of `message`, and `steps` instead of `chats_per_user` (one chat at a
    # time): the other was silently never read, so a file asking for 3 chats per user of its steps played one each.
    scenario = tmp_path / "unread.yaml"
    scenario.write_text(f"name: unread\n{yaml_text}\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:{line}:", f"field '{field}'")


@pytest.mark.parametrize("step", ["  - chat:\n", "  - chat: 5\n"])
def test_a_chat_step_that_is_no_mapping_names_the_field_as_the_file_spells_it(tmp_path, step):
    # pydantic's location repeats the union's tag (steps.0.chat.chat); the message names what is in the file.
    scenario = tmp_path / "steps.yaml"
    scenario.write_text("name: steps\nusers: 1\nsteps:\n" + step)
    err = one_error(run_cli("run", str(scenario)), f"{scenario}:4:", "field 'steps.0.chat'")
    assert "chat.chat" not in err


@pytest.mark.parametrize("steps, line, needle", [
    ("  - chat: {message: hi}\n  - chat:\n      message: again\n      thread: sideways\n", 7, "'new' or 'continue'"),
    ("  - send_raw: nope\n  - chat:\n      thread: continue\n", 6, "a chat step before it"),
    ("  - chat: {message: hi, thread: continue}\n", 4, "a chat step before it"),
])
def test_a_thread_that_cannot_be_followed_names_the_file_line_and_field(tmp_path, steps, line, needle):
    # `thread: continue` goes on with an earlier chat step's thread: on the first chat step there is none.
    scenario = tmp_path / "conv.yaml"
    scenario.write_text("name: conv\nusers: 1\nsteps:\n" + steps)
    one_error(run_cli("run", str(scenario)), f"{scenario}:{line}:", f"field 'steps.{steps.count('- ') - 1}.chat.thread'",
              needle)


@pytest.mark.parametrize("template", ["{history}", "past: {history}"])
def test_history_is_only_ever_a_whole_item_of_a_list(tmp_path, template):
    # "{history}" is spliced into a list (the conversation's earlier messages); anywhere else it is refused.
    profile = tmp_path / "p.yaml"
    profile.write_text(NETRA.read_text().replace('content: "{content}"', f'content: "{template}"'))
    one_error(run_cli("run", "basic", "--profile", str(profile), "--target", "ws://127.0.0.1:9/ws"),
              f"{profile}:", "field 'request'", "{history} stands alone")


AGUI = NETRA.parent / "ag-ui.yaml"


@pytest.mark.parametrize("edit, needle", [
    # A second "{history}" item (here in a list of its own) would send the whole conversation again with each turn: a
    # file of thousands of them made every continued request thousands of times the 32 KiB bound.
    (("tools: []", 'tools: ["{history}", ["{history}"]]'), "it is 3 items here"),
    # A resume sends no conversation: "{history}" there was accepted and silently left out.
    (("forwardedProps: {}", 'forwardedProps: {}\nresume: {type: resume, runId: "{run_id}", past: ["{history}"]}'),
     "a resume carries none"),
])
def test_history_is_spliced_into_the_chat_request_once(tmp_path, edit, needle):
    text = AGUI.read_text()
    assert edit[0] in text
    profile = tmp_path / "p.yaml"
    profile.write_text(text.replace(edit[0], edit[1], 1))
    field = "resume" if "resume" in edit[1] else "request"
    one_error(run_cli("run", "basic", "--profile", str(profile), "--target", "ws://127.0.0.1:9/ws"),
              f"{profile}:", f"field '{field}'", "{history}", needle)


@pytest.mark.parametrize("args,flag", [
    (["run", "basic", "--target-name", "x" * 300], "--target-name 'xxxx"),
    (["run", "basic", "--target-name", "prod\nfake_metric 1"], "--target-name 'prod\\nfake_metric 1'"),
    (["proxy", "--upstream", "ws://127.0.0.1:9/ws", "--target-name", "a b"], "--target-name 'a b'"),
    (["proxy", "--upstream", "ws://127.0.0.1:9/ws", "--scenario", "live:" + "y" * 100], "--scenario 'live:yyy"),
])
def test_a_label_given_by_flag_is_held_to_what_the_config_files_take(args, flag):
    """`--target-name` (run, Locust, pytest, the proxy) and the proxy's `--scenario` become the `target` and
    `scenario` labels of every series: they were taken as given (300 characters, a newline), where a monitor config's
    target name and a scenario's name are 1 to 64 letters, digits or `_.-` (`:[]` too for a target)."""
    one_error(run_cli(*args), flag, "1 to 64 letters, digits")


@pytest.mark.parametrize("field, yaml_text", [
    # YAML 1.1 (PyYAML) reads a plain 1:30 as the base-60 integer 90 and 1:30:00 as 5400: a deadline of 90 s where
    # 1h30m may have been meant, taken in silence. Now the text it is, which no duration is.
    ("expect.deadline", "expect: {deadline: 1:30}"),
    ("max_duration", "max_duration: 1:30:00"),
    ("ramp_up", "ramp_up: 0:30"),
    ("think_time.max", "think_time: {min: 1s, max: 1:30.5}"),
    ("objectives.chat_duration.max", "objectives: {chat_duration: {max: 2:00}}"),
])
def test_a_base_60_number_is_no_duration(tmp_path, capsys, field, yaml_text):
    from harness.cli import main
    scenario = tmp_path / "clock.yaml"
    scenario.write_text(f"name: clock\n{yaml_text}\n")
    assert main(["run", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert f"{scenario}:2: field '{field}'" in err and "base-60" in err and "write it with units" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_base_60_number_is_no_count_nor_a_flags_duration(tmp_path, capsys):
    from harness.cli import main
    from harness.yamlfile import load_scalar
    scenario = tmp_path / "clock.yaml"
    scenario.write_text("name: clock\nusers: 1:30\n")  # was 90 users
    assert main(["run", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert f"{scenario}:2: field 'users'" in err and "valid integer" in err, err
    assert main(["run", "basic", "--max-duration", "1:30"]) == 2
    assert "--max-duration" in (err := capsys.readouterr().err) and "base-60" in err, err
    # an --objective's value is read as the file reads it: not 90 (then "90 would be read as seconds")
    assert main(["run", "basic", "--objective", "chat_duration.max=1:30"]) == 2
    assert "'1:30' is no duration" in (err := capsys.readouterr().err), err
    assert (load_scalar("1:30"), load_scalar("'1:30'"), load_scalar("90"), load_scalar("1.5")) == ("1:30", "1:30", 90, 1.5)


@pytest.mark.parametrize("field, yaml_text, words", [
    # FAILED on the old code, each read as YAML 1.1 reads it and taken in silence: a leading 0 is octal (a deadline of
    # 8 s, 8 users, an objective of 8 violations where 10 was written), and an explicit `!!int`/`!!float` tag still
    # asked for base-60 (90, where the plain 1:30 is already refused).
    ("expect.deadline", "expect: {deadline: 010}", "octal 8, YAML 1.2 as 10; write 10 (or 8)"),
    ("users", "users: 010", "octal 8"),
    ("stages.0.users", "stages: [{duration: 1s, users: -012}]", "octal -10, YAML 1.2 as -12"),
    ("objectives.violations.max", "objectives: {violations: {max: 0_10}}", "octal 8"),
    ("expect.deadline", "expect: {deadline: !!int 1:30}", "base-60"),
    ("chats_per_user", "chats_per_user: !!int 1:30", "base-60"),
    ("think_time.max", "think_time: {min: 1s, max: !!float 1:30.5}", "base-60"),
    ("expect.deadline", "expect: {deadline: !!int 09}", "write 9 without it"),
])
def test_a_yaml_1_1_octal_or_tagged_base_60_number_is_refused(tmp_path, field, yaml_text, words):
    from harness.scenario import load_scenario
    from harness.yamlfile import ConfigError

    scenario = tmp_path / "octal.yaml"
    scenario.write_text(f"name: octal\n{yaml_text}\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(str(scenario))
    assert f"{scenario}:2: field '{field}'" in str(info.value) and words in str(info.value), info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field, yaml_text", [
    ("message", "message: 0042"),
    ("messages.1", "messages: [hi, 0042]"),
    ("steps.0.chat.message", "steps: [{chat: {message: 0042}}]"),
    ("steps.0.send_raw", "steps: [{send_raw: 0042}]"),
    ("description", "description: -0042"),
])
def test_a_leading_zero_number_in_a_text_field_is_told_to_be_quoted(tmp_path, field, yaml_text):
    """FAILED on the old code ("write 42 (or 34) without the leading 0"): in a field that takes text (a message, an
    id, a name) 0042 was meant as the text 0042, and 42 is not it either: the advice is to quote it. A number field
    keeps the number's advice (above)."""
    from harness.scenario import load_scenario
    from harness.yamlfile import ConfigError

    scenario = tmp_path / "ids.yaml"
    scenario.write_text(f"name: ids\n{yaml_text}\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(str(scenario))
    written = yaml_text.rpartition(" ")[2].strip("]}")
    assert f"{scenario}:2: field '{field}': {written} has a leading 0" in str(info.value), info.value
    assert f"this field is text: quote it, '{written}'" in str(info.value) and "write 42" not in str(info.value)
    assert "\n" not in str(info.value)


def test_a_leading_zero_id_in_a_profile_or_monitor_config_gets_the_advice_its_field_needs(tmp_path):
    """FAILED on the old code (each "write 42 (or 34)"): a profile's wire name (`fields.thread_id: [0042]`) and a
    monitor config's target name (a key) are text: quote them; a value of the request template is sent as written,
    a number or text as the dialect wants: both ways are said. One line each, naming file, line and field (exit 2)."""
    from harness.yamlfile import ConfigError
    from monitors.monitor import load_config

    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\nrequest: {type: m, payload: {thread_id: 0042, content: '{content}'}}\n")
    one_error(run_cli("run", "basic", "--profile", str(profile)), f"{profile}:2: field 'request.payload.thread_id'",
              "write 42 for the number, or quote it, '0042', for the text")
    profile.write_text("name: p\nrequest: {type: m}\nfields: {thread_id: [conv, 0042]}\n")
    one_error(run_cli("run", "basic", "--profile", str(profile)), f"{profile}:3: field 'fields.thread_id.1'",
              "this field is text: quote it, '0042'")
    config = tmp_path / "m.yaml"
    config.write_text("targets:\n  0042: {url: ws://127.0.0.1:9/ws}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:2: field 'targets\.0042': .*this field is text: quote it, '0042'"):
        load_config(str(config))


def test_an_octal_number_in_a_scenario_is_a_usage_error(tmp_path):
    scenario = tmp_path / "octal.yaml"
    scenario.write_text("name: octal\nusers: 010\nmax_duration: 3s\n")  # (bounded: the old code ran 8 users)
    one_error(run_cli("run", str(scenario)), f"{scenario}:2: field 'users': 010 has a leading 0")


def test_yaml_1_1_numbers_that_say_what_they_are_are_read_as_written(tmp_path):
    """Hexadecimal, binary and digits grouped with `_` mean one number only (as in Python): read so. A decimal point
    makes no octal (`010.5` is 10.5), nor does a digit 8 or 9 (`08` is the text 08, which a duration reads as 8 s),
    and a quoted `'010'` is text, which a duration's own grammar reads as 10 s. The same file with a leading-zero
    integer beside them is refused (FAILED on the old code: 8 chats a user)."""
    from harness.scenario import load_scenario
    from harness.yamlfile import ConfigError

    scenario = tmp_path / "forms.yaml"
    text = ("name: forms\nusers: 0x1A\nchats_per_user: 0b11\nmax_duration: 1_000\n"
            "expect: {deadline: 010.5, stall_limit: 08, settle: '010'}\n")
    scenario.write_text(text)
    s = load_scenario(str(scenario))
    assert (s.users, s.chats_per_user, s.max_duration) == (26, 3, 1000.0)
    assert (s.expect.deadline, s.expect.stall_limit, s.expect.settle) == (10.5, 8.0, 10.0)
    scenario.write_text(text.replace("chats_per_user: 0b11", "chats_per_user: 010"))
    with pytest.raises(ConfigError, match=r"forms\.yaml:3: field 'chats_per_user': 010 has a leading 0"):
        load_scenario(str(scenario))


def test_an_octal_objective_flag_profile_or_monitor_config_is_refused(tmp_path):
    """FAILED on the old code: `--objective violations.max=010` (read as a scenario file reads it) allowed 8
    violations; a profile's `seq_start: 01` and a monitor config's `interval: 010` / `timeout: !!int 1:30` were taken
    as YAML 1.1 reads them."""
    from harness.yamlfile import ConfigError
    from monitors.monitor import load_config

    one_error(run_cli("run", "basic", "--objective", "violations.max=010"), "--objective 'violations.max=010'",
              "octal 8")
    profile = tmp_path / "p.yaml"
    profile.write_text(NETRA.read_text().replace("request:\n", "seq_start: 01\nrequest:\n", 1))
    line = NETRA.read_text().splitlines().index("request:") + 1
    one_error(run_cli("run", "basic", "--profile", str(profile)), f"{profile}:{line}: field 'seq_start'",
              "leading 0", "write 1 without it")
    config = tmp_path / "m.yaml"
    for text, where in (("interval: 010", "m.yaml:3: field 'interval'.*octal 8"),
                        ("timeout: !!int 1:30", "m.yaml:3: field 'timeout'.*base-60")):
        config.write_text(f"targets:\n  a: {{url: ws://127.0.0.1:9/ws}}\n{text}\n")
        with pytest.raises(ConfigError, match=where):
            load_config(str(config))


def test_a_monitor_interval_in_base_60_is_refused(tmp_path):
    from harness.yamlfile import ConfigError
    from monitors.monitor import load_config
    config = tmp_path / "m.yaml"
    config.write_text("targets:\n  a: {url: ws://127.0.0.1:9/ws}\ninterval: 1:30\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:3: field 'interval'.*base-60"):
        load_config(str(config))


def test_two_scenarios_of_one_name_are_refused_as_the_monitor_refuses_them(tmp_path):
    # They ran, and every consumer conflated them: two JUnit test cases of one classname and name (what a CI tracks
    # over time), --json records a reader keys by name, one `scenario` label, and one Pushgateway group, where the
    # second scenario's push replaced the first's result.
    again = tmp_path / "again.yaml"
    again.write_text("# another scenario, the built-in's name\nname: basic\nusers: 2\n")
    junit = tmp_path / "r.xml"
    one_error(run_cli("run", "basic", str(again), "--junit", str(junit)),
              f"{again}:2: field 'name': scenario name 'basic' is given twice (also scenarios/basic.yaml:")
    one_error(run_cli("run", "basic", "basic"), "scenario name 'basic' is given twice")
    assert not junit.exists()


@pytest.mark.parametrize("command, flag", [
    ("run", "--token-env"), ("run", "--jwt-secret-env"), ("run", "--token-file"), ("run", "--ca-file"),
    ("run", "--profile"), ("monitor", "--token-env"), ("monitor", "--token-file"), ("monitor", "--ca-file"),
    ("proxy", "--record"),
])
def test_an_empty_value_for_a_credential_file_or_profile_flag_is_refused_not_taken_as_not_given(command, flag,
                                                                                                 refused_port):
    # `--token-env "$PROD_TOKEN_VAR"` with the variable unset in CI. FAILED on the old code: taken as not given, the
    # run went on with CHATPROBE_TOKEN's token (another environment's) or none, the system's CAs instead of the
    # private one asked for, the default profile; the proxy ran keeping no recording (it ran until stopped: the
    # timeout here).
    url = f"ws://127.0.0.1:{refused_port()}/ws"
    argv = {"run": ["run", "basic", "--target", url, "-q"],
            "monitor": ["monitor", "--target", url, "--once"],
            "proxy": ["proxy", "--upstream", url, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]}
    token = {"CHATPROBE_TOKEN": "tok-of-another-environment-0123456789"}
    proc = run_cli(*argv[command], flag, "", env=token, timeout=30)
    line = one_error(proc, f"{flag}: an empty ")
    assert token["CHATPROBE_TOKEN"] not in line


@pytest.mark.parametrize("command, flag", [
    ("run", "--token-env"), ("run", "--jwt-secret-env"), ("run", "--token-file"),
    ("monitor", "--token-env"), ("monitor", "--jwt-secret-env"), ("monitor", "--token-file"),
])
def test_an_empty_credentials_flag_is_refused_without_target_too(command, flag):
    # FAILED on the old code: without --target (the embedded agentsim, which mints its own tokens) the credentials
    # flags were never read, so `--token-env "$UNSET"` ran the suite and exited 0, where --ca-file and --profile, and
    # the same flag with --target, exit 2: the README's "an empty --token-env ... exits 2 naming the flag".
    argv = {"run": ["run", "basic", "-q"], "monitor": ["monitor", "--once"]}
    one_error(run_cli(*argv[command], flag, "", timeout=60), f"{flag}: an empty ")


@pytest.mark.parametrize("flag", ["--chatprobe-token-env", "--chatprobe-jwt-secret-env", "--chatprobe-token-file"])
def test_the_pytest_plugin_refuses_an_empty_credentials_flag_without_target_too(flag, tmp_path):
    # FAILED on the old code: with the embedded agentsim (no --chatprobe-target) the flag was never read and the
    # tests ran; with --chatprobe-target the same flag is pytest's usage error, as `chatprobe run`'s is exit 2.
    (tmp_path / "test_mine.py").write_text("def test_x(chatprobe):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
                           str(tmp_path), flag, ""], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 4, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert f"{flag}: an empty " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("yaml_text, line, field, needle", [
    ("max_reconnect_attempts: 0", 2, "max_reconnect_attempts", "greater than or equal to 1"),
    ("max_reconnect_attempts: 1001", 2, "max_reconnect_attempts", "less than or equal to 1000"),
    ("max_reconnect_attempts: true", 2, "max_reconnect_attempts", ""),
    ("reconnect_timeout: 0s", 2, "reconnect_timeout", "more than 0"),
    ("reconnect_timeout: soon", 2, "reconnect_timeout", ""),
    ("reconnect: false\nreconnect_timeout: 5s", 3, "reconnect_timeout", "never reconnects"),
    ("max_reconnects: 0\nmax_reconnect_attempts: 5", 3, "max_reconnect_attempts", "never reconnects"),
])
def test_a_reconnect_bound_that_is_no_bound_names_the_file_line_and_field(tmp_path, yaml_text, line, field, needle):
    """The reconnect retries' bounds (docs/scenarios.md): none that would never let an attempt start, retry for ever,
    or never be read; exit 2 before anything connects."""
    scenario = tmp_path / "retry.yaml"
    scenario.write_text(f"name: retry\n{yaml_text}\n")
    one_error(run_cli("run", str(scenario), "--target", "ws://127.0.0.1:9/ws"), f"{scenario}:{line}",
              f"field '{field}'", needle)
