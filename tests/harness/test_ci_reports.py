"""What a CI that gates on `chatprobe run` / `chatprobe check` reads of them: the JUnit XML its test view shows
(Jenkins' JUnit plugin, GitLab, GitHub's reporters), the JSON it keeps and the HTML page it publishes, each
parsed as those tools parse it, and agreeing with the exit code."""
from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

from harness.offline import UNTIMED_NOTE

from .reports import check_json_report, check_junit_report
from .test_cli import run_cli


class _Text(HTMLParser):
    """The text a browser shows of a page (no markup), as one string."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def page_text(path: Path) -> str:
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    return " ".join(" ".join(parser.parts).split())


def test_a_checks_warnings_reach_the_junit_test_view_and_the_html_page(tmp_path):
    """A recording whose times are lost (a log that kept frames, not times) is judged without its latency
    objectives, and `check` warns so. The warning was on the terminal and in the JSON only: the JUnit system-out a
    CI's test view shows and the HTML page (a run without stages) said nothing of it, so a gate that passed with no
    first-event time judged read as one that had judged it."""
    rec = tmp_path / "rec"
    proc = run_cli("run", "basic", "--record", str(rec), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for f in rec.iterdir():  # the same frames, their times dropped (a send's `due` too: written when the machine was
        # slow to send the chat's message, DUE_SLACK, and a time of its own)
        records = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("t", "due")}) + "\n" for r in records))

    out = {kind: tmp_path / f"check.{kind}" for kind in ("json", "junit", "html")}
    proc = run_cli("check", str(rec), *(a for kind, path in out.items() for a in (f"--{kind}", str(path))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert UNTIMED_NOTE in " ".join(proc.stdout.split())

    doc = check_json_report(out["json"])
    assert doc["passed"] is True and doc["scenarios"][0]["warnings"] == [UNTIMED_NOTE]
    root = check_junit_report(out["junit"])
    [case] = root.iter("testcase")
    assert case.find("failure") is None and case.find("error") is None
    assert f"warning: {UNTIMED_NOTE}" in case.findtext("system-out")
    assert f"warning: {UNTIMED_NOTE}" in page_text(out["html"])


def test_a_console_that_cannot_encode_the_summary_gets_escapes_not_a_crash(tmp_path):
    """A CI runner's console in a Windows code page (cp1252, what Python writes a pipe in there) or an ASCII one has
    no ✓: printing the summary raised UnicodeEncodeError, so a passing run ended in a traceback with exit 1, the
    code of a failed objective, before any report was written."""
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    for encoding in ("cp1252", "ascii"):
        proc = run_cli("run", "basic", "--json", str(out), "--junit", str(junit),
                       env={"PYTHONIOENCODING": encoding, "PYTHONUTF8": "0"})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert "\\u2713 time_to_first_event.p95" in proc.stdout, proc.stdout
        assert check_json_report(out)["passed"] is True
        [case] = check_junit_report(junit).iter("testcase")
        assert case.get("name") == "basic" and case.find("failure") is None
        out.unlink()
        junit.unlink()


def test_a_reader_that_leaves_the_output_early_leaves_the_run_its_verdict_and_reports(tmp_path):
    """`chatprobe run ... | grep -m1 FAILED`, `| head`, a log shipper that died: the pipe's reader is gone. rich's
    answer to the broken pipe was SystemExit(1): the run stopped after its first scenario, silent, with exit 1 (an
    objective failed) and no report. The rest of the output goes nowhere; the verdict, the exit code and the reports
    are the run's."""
    import os
    import subprocess

    from .test_cli import CHATPROBE

    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.Popen([*CHATPROBE, "run", "basic", "errors", "--json", str(out), "--junit", str(junit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    assert proc.stdout is not None
    proc.stdout.close()  # the reader leaves before the run has written a line
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    assert [s["scenario"] for s in check_json_report(out)["scenarios"]] == ["basic", "errors"]
    assert [c.get("name") for c in check_junit_report(junit).iter("testcase")] == ["basic", "errors"]


def test_standard_output_on_a_full_disk_leaves_the_run_its_verdict_and_reports(tmp_path):
    """A CI log on a full disk (`> /dev/full`): the first line the console wrote raised ENOSPC, a traceback, exit 1 and
    no report. It is said once on standard error; the rest of the output is dropped, the verdict, the exit code and the
    reports are the run's, and Python's own flush at exit finds nothing to fail on (exit 120)."""
    import subprocess

    from .test_cli import CHATPROBE

    junit = tmp_path / "r.xml"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*CHATPROBE, "run", "basic", "--junit", str(junit)], stdout=full, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=240)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("standard output: No space left on device") == 1, proc.stderr
    [case] = check_junit_report(junit).iter("testcase")
    assert case.get("name") == "basic" and case.find("failure") is None


async def test_one_scenario_failing_and_another_unreachable_exit_3_and_every_report_says_which(tmp_path):
    """A raw server that answers the first connection with a run missing its tool_completed and then never answers
    an upgrade again: `broken` fails, `silent` cannot reach it within its connect_timeout. Exit 3 (unreachable wins
    over a failed objective, README), and every report tells the two apart: a JUnit <failure> and an <error>, the
    JSON's passed/unreachable, the HTML's verdicts."""
    import asyncio
    import os
    import sys

    from tests.integration.hostile_ws import frame, raw, read_until_gone, run_frames, upgrade, welcome_and_message

    served = 0

    async def first_only(reader, writer, head, _server) -> None:
        nonlocal served
        served += 1
        if served == 1:
            writer.write(upgrade(head))
            message_id = await welcome_and_message(reader, writer)
            writer.write(b"".join(frame(1, f) for f in run_frames(message_id) if b"tool_completed" not in f))
            await writer.drain()
        await read_until_gone(reader)  # later connections: the upgrade is never answered

    (tmp_path / "broken.yaml").write_text("name: broken\nexpect: {deadline: 5s, settle: 0.1s}\n")
    (tmp_path / "silent.yaml").write_text("name: silent\nconnect_timeout: 1s\n")
    out = {kind: tmp_path / f"r.{kind}" for kind in ("json", "junit", "html")}
    async with raw(first_only) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harness", "run", str(tmp_path / "broken.yaml"), str(tmp_path / "silent.yaml"),
            "--target", server.url, "--auth", "none", "-q",
            *(a for kind, path in out.items() for a in (f"--{kind}", str(path))),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 3 and "Traceback" not in text, text

    doc = check_json_report(out["json"])
    assert doc["passed"] is False
    assert [(s["scenario"], s["passed"], s["unreachable"]) for s in doc["scenarios"]] == [
        ("broken", False, False), ("silent", False, True)]
    root = check_junit_report(out["junit"])
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "1")
    [suite] = root.iter("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("2", "1", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["broken"].find("failure") is not None and cases["broken"].find("error") is None
    assert "R2" in cases["broken"].find("failure").text
    error = cases["silent"].find("error")
    assert error is not None and error.get("type") == "Unreachable" and cases["silent"].find("failure") is None
    assert "timeout" in error.get("message")
    html = page_text(out["html"])
    assert "objectives not met" in html and "FAILED (" in html and "UNREACHABLE" in html


def test_a_scenario_the_runs_max_duration_left_no_time_for_is_not_run_not_an_error(tmp_path):
    """`--max-duration` bounds the whole run (README's CI example): the scenario it runs out in is stopped there, and
    the ones after it were each started with no time left, found no chat started and were a JUnit <error>, "the
    scenario could not run: no chat was started", with nothing in the JSON's errors: an infrastructure fault to a
    CI's test view. They are not run, as after a stop: a <skipped> saying why, the JSON's errors too; the exit code
    stays 1, nothing was proven of them."""
    (tmp_path / "long.yaml").write_text('name: long\nusers: 2\nchats_per_user: 100\nmessage: "#think=0.2 hi"\n')
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = run_cli("run", str(tmp_path / "long.yaml"), "basic", "--max-duration", "2s", "--json", str(out),
                   "--junit", str(junit), "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    why = "not run: the run was past its --max-duration before it started"
    long, basic = check_json_report(out)["scenarios"]
    # `long` (12 s of chats) is stopped where the 2 s run out, or, on a machine so busy that the embedded server's
    # start took them all, not run either
    assert long["stopped_early"] and (long["stats"]["chats"] > 0 or long["errors"] == [why]), long
    assert basic["errors"] == [why] and basic["stats"]["chats"] == 0 and basic["passed"] is False
    [suite] = check_junit_report(junit).iter("testsuite")
    assert suite.get("tests") == "2" and suite.get("errors") == "0", suite.attrib
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["basic"].find("error") is None and cases["basic"].find("skipped").get("message") == why


def test_force_color_in_a_ci_log_colours_it_but_keeps_the_plain_progress_lines(tmp_path):
    """CI sets FORCE_COLOR for coloured logs; rich then takes the log for a terminal: the live line was redrawn in it
    four times a second (carriage returns and erase-line codes, in a log that keeps them all) and the plain progress
    line every --progress-interval never came. Colours, yes; the live line only on a terminal."""
    (tmp_path / "paced.yaml").write_text('name: paced\nusers: 2\nchats_per_user: 5\nmessage: "#think=0.2 hi"\n')
    proc = run_cli("run", str(tmp_path / "paced.yaml"), "--progress-interval", "0.2s",
                   env={"FORCE_COLOR": "1", "NO_COLOR": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b[" in proc.stdout  # coloured, as asked
    assert "\r" not in proc.stdout and "\x1b[2K" not in proc.stdout, proc.stdout[:2000]
    assert "paced running " in proc.stdout and "paced: 10 chats, 10 passed, objectives met" in proc.stdout, proc.stdout


def test_a_run_started_with_its_stdout_closed_still_writes_its_reports_and_exit_code(tmp_path):
    """`chatprobe run ... >&-` (a daemon or a scheduler's job with no output): Python gives sys.stdout None, and the
    console's first look at it raised AttributeError: a traceback, exit 1 and no report. The output goes nowhere."""
    import subprocess

    from .test_cli import CHATPROBE

    junit = tmp_path / "r.xml"
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *CHATPROBE, "run", "basic", "--junit", str(junit)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [case] = check_junit_report(junit).iter("testcase")
    assert case.get("name") == "basic" and case.find("failure") is None


def test_a_report_given_as_dash_is_standard_output_alone(tmp_path):
    """`--json -` (`| jq .passed`), `--junit -`, `--html -`: the report alone on standard output, the summary and every
    other line on standard error. `-` was a file of that name in the working directory, and standard output held the
    summary table; a recording directory that is the working directory did not make `-` a report inside it."""
    import subprocess
    import xml.etree.ElementTree as ET

    from .test_cli import CHATPROBE

    rec = tmp_path / "rec"
    rec.mkdir()
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([*CHATPROBE, "run", "basic", "--record", ".", "--json", "-"], cwd=rec, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "r.json").write_text(proc.stdout)
    doc = check_json_report(tmp_path / "r.json")  # the whole of standard output is the report
    assert doc["passed"] is True and doc["scenarios"][0]["scenario"] == "basic"
    assert "chatprobe results" in proc.stderr and "basic" in proc.stderr  # the summary, on standard error
    assert not (rec / "-").exists() and any(rec.iterdir())

    for flag, parse in (("--junit", ET.fromstring), ("--html", page_text_of)):
        proc = subprocess.run([*CHATPROBE, "check", "rec", flag, "-"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        parsed = parse(proc.stdout)
        if flag == "--junit":
            [case] = parsed.iter("testcase")
            assert case.find("failure") is None and case.find("error") is None
        else:
            assert "passed" in parsed
        assert "chatprobe results" in proc.stderr
    assert not (tmp_path / "-").exists()


def page_text_of(html: str) -> str:
    """The text of an HTML page given whole (it must be one: a page that starts with the summary table is none)."""
    assert html.lstrip().startswith("<!DOCTYPE html>"), html[:200]
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


def test_two_reports_to_standard_output_are_refused_before_the_run(tmp_path):
    """`--json - --junit /dev/stdout`: one report would be written into the other; exit 2 naming both, nothing run."""
    proc = run_cli("run", "basic", "--json", "-", "--junit", "/dev/stdout")
    assert proc.returncode == 2
    assert "--json and --junit both write to standard output" in proc.stderr
    assert proc.stdout == "" and "chatprobe results" not in proc.stderr


def test_a_report_to_standard_output_that_is_a_socket_is_sent_on_it(tmp_path):
    """A supervisor, a log shipper or a parent process hands standard output over as a socket: `--json -` opened
    /dev/stdout, which the kernel refuses for a socket (ENXIO), so the run ended 'could not write the report: No such
    device or address', exit 2 with its chats passed. The report is sent on the socket, whole, and the run exits 0."""
    import socket
    import subprocess
    import threading

    from .test_cli import CHATPROBE

    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen([*CHATPROBE, "run", "basic", "--json", "-"], stdout=theirs, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
        theirs.close()
        got: list[bytes] = []
        ours.settimeout(240)

        def read() -> None:
            while chunk := ours.recv(65536):
                got.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _, err = proc.communicate(timeout=240)
        reader.join(240)
    assert proc.returncode == 0 and "Traceback" not in err, err
    (tmp_path / "r.json").write_bytes(b"".join(got))
    doc = check_json_report(tmp_path / "r.json")
    assert doc["passed"] is True and doc["scenarios"][0]["scenario"] == "basic"
    assert "chatprobe results" in err


def test_a_report_to_standard_output_that_is_closed_is_refused_before_the_run(tmp_path):
    """`chatprobe run --json - >&-`: the process's standard output was made /dev/null, and the report went there, the
    run passing (exit 0) with no report anywhere. Exit 2 before the run, naming the flag; a file is written as ever."""
    import subprocess

    from .test_cli import CHATPROBE

    for name in ("-", "/dev/stdout"):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *CHATPROBE, "run", "basic", "--json", name],
                              capture_output=True, text=True, timeout=240, env={**os.environ, "NO_COLOR": "1"})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"chatprobe: error: --json {name}: standard output is closed (started with it "
                                       "closed, `>&-`): the report would go nowhere; give it a file"), proc.stderr
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *CHATPROBE, "check", str(tmp_path), "--junit", "-"],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2 and "--junit -: standard output is closed" in proc.stderr, proc.stderr


def test_a_report_to_standard_output_redirected_to_the_file_another_report_names_is_refused(tmp_path):
    """`chatprobe run --json - --junit r.xml > r.xml`: the JSON went into r.xml through standard output, then the JUnit
    report replaced r.xml, and the JSON went with the file it replaced: exit 0, one report of two. Exit 2 before the
    run, naming both, as two report flags naming one file are."""
    import subprocess

    from .test_cli import CHATPROBE

    junit = tmp_path / "r.xml"
    with open(junit, "w") as out:
        proc = subprocess.run([*CHATPROBE, "run", "basic", "--json", "-", "--junit", "r.xml"], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=240, cwd=tmp_path,
                              env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("chatprobe: error: --json - writes to standard output, which is the file --junit "
                                   "names (r.xml): one report would overwrite the other; give one of them another "
                                   "file"), proc.stderr
    assert junit.read_text() == ""
