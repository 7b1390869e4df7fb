"""chatprobe installed into a team's own project: the project's own packages named like chatprobe's folders.

chatprobe's pytest plugin is loaded by every pytest run of the virtualenv it is installed in (its pytest11 entry
point), before the project's conftest puts the project on sys.path. A load-testing project's own `scenarios/` (or a
Grafana-as-code project's `dashboards/`) package must stay the project's, in its tests, and chatprobe's built-in
scenarios chatprobe's, whichever of the two is first on sys.path."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _team_project(root: Path) -> None:
    """A project with its own `scenarios` package (regular) and `dashboards` folder (a namespace package: no
    __init__.py), a conftest at its root (pytest puts the root on sys.path when it loads it) and a test that imports
    both and uses the `chatprobe` fixture."""
    (root / "scenarios").mkdir()
    (root / "scenarios" / "__init__.py").write_text("")
    (root / "scenarios" / "checkout.py").write_text("PRICE = 42\n")
    (root / "dashboards").mkdir()
    (root / "dashboards" / "panels.py").write_text("PANELS = 3\n")
    (root / "conftest.py").write_text("")
    (root / "test_team.py").write_text(textwrap.dedent("""
        def test_own_scenarios_package():
            from scenarios.checkout import PRICE
            assert PRICE == 42


        def test_own_dashboards_namespace_package():
            from dashboards.panels import PANELS
            assert PANELS == 3


        def test_chatprobe_keeps_its_built_ins(chatprobe):
            from harness.catalog import builtin_scenarios
            assert {"basic", "probe"} <= set(builtin_scenarios()), builtin_scenarios()
            chatprobe.check(chatprobe.chat("What is 6 * 7?"))
    """))


@pytest.mark.parametrize("how", ["pytest", "python -m pytest"])
def test_a_projects_own_scenarios_and_dashboards_packages_stay_its_own(pytester, how):
    """`pytest` (the project put on sys.path by its conftest, after the plugin loaded) and `python -m pytest` (the
    project first on sys.path from the start): the team's imports and chatprobe's built-ins both hold."""
    _team_project(pytester.path)
    pytest_script = Path(sys.executable).parent / "pytest"
    argv = [str(pytest_script)] if how == "pytest" else [sys.executable, "-m", "pytest"]
    proc = subprocess.run([*argv, "-p", "no:cacheprovider", "-rA", "-W", "ignore::DeprecationWarning"],
                          cwd=pytester.path, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTEST_ADDOPTS": ""})
    out = proc.stdout + proc.stderr
    assert "3 passed" in out and proc.returncode == 0, out


def test_chatprobe_run_beside_a_projects_own_scenarios_package_finds_its_built_ins(tmp_path):
    """`python -m harness` (the current directory first on sys.path) in a project with its own `scenarios`
    package: `list` names chatprobe's built-in scenarios, and `run basic` plays chatprobe's."""
    _team_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "harness", "list"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "basic" in listed.stdout and "probe" in listed.stdout, listed.stdout
    ran = subprocess.run([sys.executable, "-m", "harness", "run", "basic", "-q"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr


@pytest.mark.parametrize("missing", ["gevent", "locust"])
def test_the_locust_user_without_the_load_extra_names_the_pip_install_to_run(tmp_path, missing):
    """A plain `pip install chatprobe` has no Locust (the `load` extra): a team's locustfile importing ChatUser says
    what to install, one line and exit 2, not a traceback ending in "No module named 'gevent'". The module is made
    absent as Python makes a module that is not installed absent to an import (None in sys.modules)."""
    locustfile = tmp_path / "mine.py"
    locustfile.write_text("from harness.locust_user import ChatUser\n\n\nclass Mine(ChatUser):\n    pass\n")
    proc = subprocess.run([sys.executable, "-c", f"import runpy, sys; sys.modules[{missing!r}] = None; "
                           f"runpy.run_path({str(locustfile)!r})"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"chatprobe: error: the Locust user needs Locust ({missing} is not installed): "
                           "pip install 'chatprobe[load]'\n"), proc.stderr


@pytest.mark.parametrize("how", ["autoload", "-p chatprobe, autoload off", "-p no:chatprobe"])
def test_the_plugin_is_loaded_and_left_out_by_its_entry_points_name(pytester, monkeypatch, how):
    """As the README says: the pytest11 entry point `chatprobe` loads it in every pytest run; with plugin autoload
    off (a hardened CI's PYTEST_DISABLE_PLUGIN_AUTOLOAD) `-p chatprobe` loads it; `-p no:chatprobe` leaves it out
    (a project that does not use it, whose own `harness` package it would otherwise hide)."""
    pytester.makepyfile(test_team="def test_chat(chatprobe):\n    chatprobe.check(chatprobe.chat('What is 6 * 7?'))\n")
    flags = {"autoload": [], "-p chatprobe, autoload off": ["-p", "chatprobe"],
             "-p no:chatprobe": ["-p", "no:chatprobe"]}[how]
    if how.endswith("autoload off"):
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *flags, timeout=60)
    if how == "-p no:chatprobe":
        res.assert_outcomes(errors=1)
        res.stdout.fnmatch_lines(["*fixture 'chatprobe' not found*"])
    else:
        res.assert_outcomes(passed=1)


def test_the_dashboard_generator_without_its_sdk_names_the_pip_install_to_run(tmp_path):
    """`python -m dashboards.generate` (README) needs grafana-foundation-sdk, of the dev extra only: without it, one
    line naming what to install and exit 2, not a traceback (the SDK made absent as a module not installed is)."""
    proc = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.modules['grafana_foundation_sdk'] = None; "
                           "runpy.run_module('dashboards.generate', run_name='__main__')", str(tmp_path / "out.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("python -m dashboards.generate: error: it needs grafana-foundation-sdk, which is not "
                           "installed: pip install 'chatprobe[dev]', or pip install grafana-foundation-sdk\n")
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("how", ["-p harness.pytest_plugin", "conftest", "conftest, autoload off"])
def test_the_plugin_named_by_its_module_beside_autoload_loads_once(pytester, monkeypatch, how):
    """`-p harness.pytest_plugin`, or a conftest's `pytest_plugins = ["harness.pytest_plugin"]` (a project that names
    the plugins it needs, as pytest suggests, for its CI whose autoload is off), in a run where autoload loads it
    too: one plugin, the test passes. FAILED on the old code: pytest stopped at start-up, "ValueError: Plugin already
    registered under a different name", and a dump of every plugin."""
    pytester.makepyfile(test_team="def test_chat(chatprobe):\n    chatprobe.check(chatprobe.chat('What is 6 * 7?'))\n")
    flags = ["-p", "harness.pytest_plugin"] if how.startswith("-p") else []
    if how.startswith("conftest"):
        pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]\n')
    if how.endswith("autoload off"):
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *flags, timeout=60)
    res.assert_outcomes(passed=1)
