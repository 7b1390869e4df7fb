"""chatprobe as a team installs it: the sdist built from this checkout, the wheel built from that sdist, the wheel
installed into a virtualenv of its own, and every entry point run from an empty directory, with no file of this
repository reachable (no PYTHONPATH, no editable install): what the wheel lacks, these commands lack.

Offline: `python -m build --no-isolation` with the dev extra's setuptools and build, and the wheel installed with
`--no-deps` into a virtualenv that reads its dependencies from this virtualenv's site-packages (a .pth line: a path
only, so the editable install's finder there is not loaded and `harness` is the wheel's)."""
from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import httpx
import jsonschema
import pytest

from .conftest import ROOT, ProcGroup, wait_for
from .test_locust import SUMMARY, finish

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# Nothing of a checkout's own files that are not the project's may reach the sdist: planted in the copy it is built
# from (as a developer's checkout has them: a .env, a recording of a chat with a real token, a virtualenv).
PLANTED = {".env": "CHAT_TOKEN=planted-secret-0123456789\n",
           "tests/artifacts/session.jsonl": '{"token": "planted-secret-0123456789"}\n',
           ".venv/pyvenv.cfg": "home = /nowhere\n",
           "rec/20260101T000000Z-x.jsonl": '{"token": "planted-secret-0123456789"}\n'}
SDIST_MAX_BYTES = 5 * 2**20
SECRET = "installed-package-secret-0123456789abcdef"
PACKAGES = {"harness", "agentsim", "monitors", "scenarios", "dashboards"}


@dataclass
class Installed:
    venv: Path
    wheel: Path
    sdist: Path
    version: str
    empty: Path  # the working directory of every command: nothing in it

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user's shell with the virtualenv activated: none of this checkout's PYTHONPATH, of
        the test run's pytest or xdist variables, nor of chatprobe's own."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "PYTEST", "VIRTUAL_ENV", "CHATPROBE", "AGENTSIM", "LOCUST", "COV_"))}
        env.update(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(self.venv),
                   NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
        return env

    def run(self, *argv: str, timeout: float = 90, cwd: Path | None = None, **env: str
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=cwd or self.empty, env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def _copy_checkout(dest: Path) -> None:
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".hypothesis", ".pytest_cache", "artifacts",
        "reports"))
    for name, text in PLANTED.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    src, dist, venv, empty = base / "src", base / "dist", base / "venv", base / "empty"
    _copy_checkout(src)
    # The sdist, then the wheel from the unpacked sdist (build's default): the sdist must hold what the wheel needs.
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=180, cwd=base)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=30, env={"PATH": os.environ["PATH"]}
                             ).stdout.strip()
    Path(purelib, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                          "--no-index", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    empty.mkdir()
    version = re.match(r"chatprobe-([^-]+)-", wheel.name)[1]  # type: ignore[index]
    found = Installed(venv, wheel, sdist, version, empty)
    where = found.run(str(found.bin / "python"), "-c", "import harness, agentsim, monitors; "
                      "print(harness.__file__, agentsim.__file__, monitors.__file__)")
    assert where.returncode == 0 and all(p.startswith(str(venv)) for p in where.stdout.split()), where
    return found


def test_the_wheel_holds_the_packages_their_data_and_entry_points_and_no_tests(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        info = f"chatprobe-{installed.version}.dist-info"
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
    # Every file of the packages' folders in this checkout: the code, the built-in scenarios and profiles, the JSON
    # Schema, the alert rules and their promtool tests, the dashboard, the locustfile.
    for package in PACKAGES:
        wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".yml", ".json")}
        assert wanted and wanted <= names, f"{package}: not in the wheel: {sorted(wanted - names)}"
    assert {n.split("/")[0] for n in names} == PACKAGES | {info}, sorted({n.split("/")[0] for n in names})
    assert not [n for n in names if n.startswith("tests/") or n.endswith((".pyc", ".jsonl"))]
    assert re.search(r"^chatprobe = harness\.cli:main$", entry_points, re.M), entry_points
    assert re.search(r"^\[pytest11\]\nchatprobe = harness\.pytest_plugin$", entry_points, re.M), entry_points
    assert metadata["Name"] == "chatprobe" and metadata["Version"] == installed.version
    assert set(metadata.get_all("Provides-Extra")) >= {"load", "dev"}


def test_the_sdist_builds_the_wheel_and_holds_no_secret_or_checkout_clutter(installed):
    assert installed.sdist.stat().st_size < SDIST_MAX_BYTES, installed.sdist.stat().st_size
    top = installed.sdist.name.removesuffix(".tar.gz")
    with tarfile.open(installed.sdist) as tar:
        members = {m.name.removeprefix(f"{top}/") for m in tar.getmembers() if m.isfile()}
        texts = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert {"pyproject.toml", "README.md", "harness/cli.py", "scenarios/basic.yaml", "docs/runbook.md",
            "docs/profiles/openai-responses.yaml"} <= members
    assert not [m for m in members if m.startswith(("tests/", ".venv/", ".git", "rec/", "bench/")) or m == ".env"]
    assert b"planted-secret" not in texts


def test_every_command_of_the_installed_package_runs_from_an_empty_directory(installed):
    """`--version` from the metadata, `list`, the built-in suite against the embedded agentsim with every report,
    `check` of its recording, and the `python -m` launchers the README names."""
    version = installed.run("chatprobe", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"chatprobe {installed.version}"), version
    assert installed.run("python", "-m", "harness", "--version").stdout.strip() == f"chatprobe {installed.version}"
    listed = installed.run("chatprobe", "list")
    assert listed.returncode == 0, listed.stderr
    for kind, folder in (("scenarios", ROOT / "scenarios"), ("profiles", ROOT / "harness" / "profiles")):
        shown = re.search(rf"^{kind}:\s+(.*)$", listed.stdout, re.M)
        assert shown and shown[1].split(", ") == sorted(p.stem for p in folder.glob("*.yaml")), listed.stdout
    ran = installed.run("chatprobe", "run", "-q", "--record", "rec", "--json", "result.json", "--html", "report.html",
                        "--junit", "report.xml", timeout=150)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    result = json.loads((installed.empty / "result.json").read_text())
    schema = installed.venv.glob("lib/python*/site-packages/harness/schemas/result.schema.json")
    jsonschema.validate(result, json.loads(next(schema).read_text()))
    assert (installed.empty / "report.html").read_text().startswith("<!DOCTYPE html>")
    checked = installed.run("chatprobe", "check", "-q", "rec")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    sim_help = installed.run("python", "-m", "agentsim", "--help")
    assert sim_help.returncode == 0 and "--fault" in sim_help.stdout, sim_help.stderr


def test_sim_monitor_and_proxy_start_and_serve_a_run(installed, tmp_path):
    """`chatprobe sim` on a free port, `run --target` against it directly and through `chatprobe proxy`, `monitor
    --once` probing it and the monitor's daemon serving its page: the installed commands' servers, each stopped at the
    end."""
    procs = ProcGroup(tmp_path)
    env = installed.env(CHATPROBE_JWT_SECRET=SECRET, AGENTSIM_JWT_SECRET=SECRET)
    env["PYTHONPATH"] = ""  # (ProcGroup gives this checkout's PYTHONPATH otherwise)
    try:
        sim = procs.start("sim", ["chatprobe", "sim", "--port", "0"], env=env, cwd=installed.empty)
        url = sim.wait_for_line(r"agentsim listening on (ws://\S+)")[1]
        direct = installed.run("chatprobe", "run", "basic", "-q", "--target", url, CHATPROBE_JWT_SECRET=SECRET)
        assert direct.returncode == 0, direct.stdout[-2000:] + direct.stderr[-2000:]
        once = installed.run("chatprobe", "monitor", "--once", "--target", url, CHATPROBE_JWT_SECRET=SECRET)
        assert once.returncode == 0, once.stdout[-2000:] + once.stderr[-2000:]
        monitor = procs.start("monitor", ["chatprobe", "monitor", "--target", url, "--listen", "127.0.0.1:0"],
                              env=env, cwd=installed.empty)
        base = monitor.wait_for_line(r"chatprobe monitor listening on (http://\S+)")[1]
        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page
        wait_for(lambda: "chatprobe_chats_total{" in httpx.get(f"{base}/metrics", timeout=5).text, 30,
                 "the monitor's /metrics has its first probe's chats", diagnostics=monitor.tail)
        proxy = procs.start("proxy", ["chatprobe", "proxy", "--upstream", url.rsplit("/", 1)[0], "--listen",
                                      "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], env=env, cwd=installed.empty)
        proxied = proxy.wait_for_line(r"chatprobe proxy listening on (ws://\S+)")[1] + "/ws"
        through = installed.run("chatprobe", "run", "basic", "-q", "--target", proxied, CHATPROBE_JWT_SECRET=SECRET)
        assert through.returncode == 0, through.stdout[-2000:] + through.stderr[-2000:] + proxy.tail()
    finally:
        procs.stop_all()


TEAM_TESTS = '''
import pytest


def test_refund_streams_every_event(chatprobe):
    result = chatprobe.check(chatprobe.chat("Refund order 42", streaming=True))
    assert result.time_to_first_event < 5


def test_a_failing_chat(chatprobe):
    chatprobe.check(chatprobe.chat("Refund order 42 #fail-agent"))


def test_an_asserted_chat(chatprobe):
    assert chatprobe.chat("What is 6 * 7? #fail-agent").passed


@pytest.mark.asyncio
async def test_async_chat(chatprobe):
    chatprobe.check(await chatprobe.achat("What is 6 * 7?"))
'''


@pytest.mark.parametrize("asyncio_mode, workers", [("strict", "2"), ("auto", "0")])
def test_the_pytest_plugin_in_a_teams_own_project(installed, tmp_path, asyncio_mode, workers):
    """The team's test files, their own pytest run (the plugin from the wheel's pytest11 entry point, no -p), on
    pytest-xdist workers and without, pytest-asyncio strict and auto: a failing chat fails its test with the chat's
    rules on the line pytest's summary shows, and one asserted on (`.passed`) lists the chat's rules in its failure, in
    the JUnit XML's failure text too (a section of the failure, through xdist's workers)."""
    project = tmp_path / "team"
    project.mkdir()
    (project / "test_team.py").write_text(TEAM_TESTS)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.pytest.ini_options]
        asyncio_mode = "{asyncio_mode}"
        asyncio_default_fixture_loop_scope = "function"
    """))
    res = installed.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-n", workers,
                        "--junitxml=junit.xml", cwd=project, timeout=120, COLUMNS="200")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    failed = r"^FAILED test_team\.py::test_a_failing_chat - AssertionError: chat failed: R13 error handling$"
    assert re.search(failed, out, re.M), out
    assert re.search(r"\b2 passed\b", out) and re.search(r"\b2 failed\b", out), out
    failures = {case.get("name"): case.find("failure") for case in ElementTree.parse(project / "junit.xml").iter("testcase")}
    for name in ("test_a_failing_chat", "test_an_asserted_chat"):
        text = failures[name].text if failures.get(name) is not None else None
        assert text is not None and "failed: R13 error handling" in text and "#fail-agent" in text, (name, text)


TYPED_TEAM_TESTS = '''
from harness.checker import ChatResult
from harness.flow import ChatOptions
from harness.pytest_plugin import ChatProbe


def test_typed(chatprobe: ChatProbe) -> None:
    result: ChatResult = chatprobe.check(chatprobe.chat("What is 6 * 7?", deadline="10s",
                                                        options=ChatOptions(settle=0.2)))
    assert result.time_to_first_event is not None
'''


def test_a_teams_mypy_checks_its_tests_against_the_installed_packages_types(installed, tmp_path):
    """A team whose CI runs `mypy --strict` over its tests, which annotate the fixture and the results with
    chatprobe's own types. FAILED on the old code: the wheel had no PEP 561 marker, so mypy refused every import of
    `harness` ("Skipping analyzing "harness.flow": module is installed, but missing library stubs or py.typed
    marker"), three errors for three imports, and checked none of the calls."""
    project = tmp_path / "team"
    project.mkdir()
    (project / "test_typed.py").write_text(TYPED_TEAM_TESTS)
    res = installed.run("python", "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy-cache"),
                        "test_typed.py", cwd=project, timeout=180)
    assert res.returncode == 0 and "Success: no issues found in 1 source file" in res.stdout, res.stdout + res.stderr
    (project / "test_typed.py").write_text(TYPED_TEAM_TESTS.replace("settle=0.2", 'settle="0.2"'))
    wrong = installed.run("python", "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy-cache"),
                          "test_typed.py", cwd=project, timeout=180)
    assert wrong.returncode == 1 and 'Argument "settle" to "ChatOptions" has incompatible type "str"' in wrong.stdout, \
        wrong.stdout + wrong.stderr  # the types are chatprobe's: a call against them is checked


def test_a_teams_own_locustfile_imports_the_chat_user(installed, tmp_path):
    """A locustfile of the team's, outside any checkout of chatprobe, subclassing the installed ChatUser, under the
    virtualenv's Locust against the installed `chatprobe sim`: the scenario's verdict and exit code."""
    procs = ProcGroup(tmp_path)
    env = installed.env(CHATPROBE_JWT_SECRET=SECRET, AGENTSIM_JWT_SECRET=SECRET)
    env["PYTHONPATH"] = ""
    load = tmp_path / "load"
    load.mkdir()
    (load / "locustfile.py").write_text(
        "from harness.locust_user import ChatUser\n\n\nclass Shopper(ChatUser):\n    pass\n")
    try:
        sim = procs.start("sim", ["chatprobe", "sim", "--port", "0"], env=env, cwd=installed.empty)
        url = sim.wait_for_line(r"agentsim listening on (ws://\S+)")[1]
        locust = procs.start("locust", ["python", "-m", "locust", "-f", "locustfile.py", "--headless", "-u", "2",
                                        "-r", "2", "--run-time", "3s", "--stop-timeout", "10", "--host", url,
                                        "--chatprobe-scenario", "basic"], env=env, cwd=load)
        assert finish(locust, 90) == 0, locust.tail(60)
        summary = SUMMARY.search(locust.out())
        assert summary is not None and summary["verdict"] == "objectives met" and int(summary["chats"]) > 0, \
            locust.tail(60)
    finally:
        procs.stop_all()


def test_a_projects_own_monitors_or_agentsim_package_is_named_not_a_traceback(installed, tmp_path):
    """A team's project with its own `monitors` and `agentsim` packages, first on sys.path (the current directory
    under `python -m`, a conftest's directory under pytest): chatprobe's own cannot be imported there, and the
    commands and the fixture that need them say whose package hides chatprobe's and what to do, in one line (exit 2;
    the fixture: its test fails with that line), where they ended in a traceback, "No module named
    'monitors.monitor'"."""
    project = tmp_path / "team"
    for package in ("monitors", "agentsim"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("")
    for argv, package in ((["monitor", "--once", "--target", "ws://127.0.0.1:9/ws"], "monitors"),
                          (["proxy", "--upstream", "ws://127.0.0.1:9"], "monitors"),
                          (["sim", "--port", "0"], "agentsim"),
                          (["run", "basic", "-q"], "agentsim")):
        res = installed.run("python", "-m", "harness", *argv, cwd=project, timeout=60)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (argv, res.stdout[-2000:], res.stderr[-3000:])
        assert res.stderr.startswith(f"chatprobe: error: the package '{package}' at {project / package} hides "
                                     "chatprobe's own (") and res.stderr.count("\n") == 1, (argv, res.stderr)
    (project / "conftest.py").write_text("")
    (project / "test_team.py").write_text(
        "def test_chat(chatprobe):\n    chatprobe.check(chatprobe.chat('What is 6 * 7?'))\n")
    res = installed.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-rA", cwd=project, timeout=60,
                        COLUMNS="300")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and re.search(
        r"^ERROR test_team\.py::test_chat - Failed: chatprobe: the embedded agentsim: the package 'agentsim' at "
        rf"{re.escape(str(project / 'agentsim'))} hides chatprobe's own \(", out, re.M), out


def test_a_hiding_package_whose_path_holds_escape_sequences_is_named_without_them(installed, tmp_path):
    """A checkout's directory named anything (a repository's folder with a terminal escape in its name): the line
    naming the package that hides chatprobe's showed the path raw, the escape sequences sent to the terminal (here
    one that retitles the window and one that resets the terminal)."""
    project = tmp_path / "team\x1b]0;owned\x07\x1bc"
    (project / "monitors").mkdir(parents=True)
    (project / "monitors" / "__init__.py").write_text("")
    res = installed.run("python", "-m", "harness", "proxy", "--upstream", "ws://127.0.0.1:9", cwd=project, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.startswith("chatprobe: error: the package 'monitors' at ") and "hides chatprobe's own (" in \
        res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr, repr(res.stderr)
    (project / "agentsim").mkdir()
    (project / "agentsim" / "__init__.py").write_text("")
    (project / "conftest.py").write_text("")
    (project / "test_team.py").write_text(
        "def test_chat(chatprobe):\n    chatprobe.check(chatprobe.chat('What is 6 * 7?'))\n")
    res = installed.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-rA", cwd=project, timeout=60,
                        COLUMNS="300")
    out = res.stdout + res.stderr
    [line] = [line for line in out.splitlines() if line.startswith("ERROR test_team.py::test_chat - ")]
    assert "the package 'agentsim' at " in line and "\x1b" not in line and "\x07" not in line, repr(out)
