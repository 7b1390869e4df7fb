"""The shape of the code, enforced: who may import whom (docs/architecture.md), and no import cycles.

Read from the source with `ast`, so it holds for imports inside functions too; imports under `if TYPE_CHECKING:`
are for the type checker only and are left out.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pydantic
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "agentsim", "monitors", "scenarios", "dashboards")
# The pure core: data in, verdicts out; no I/O framework, no command line, no driver.
PURE = ("harness.events", "harness.checker", "harness.flow", "harness.profiles", "harness.scenario",
        "harness.stats", "harness.report", "harness.results", "harness.eventstream", "harness.durations",
        "harness.yamlfile", "harness.sinks", "harness.recordings", "harness.offline", "harness.payload_checks",
        "harness.errors", "harness.catalog", "harness.backoff", "harness.subprotocols", "harness.checksets")
IO_LIBRARIES = ("asyncio", "websockets", "httpx", "gevent", "argparse", "locust", "socket", "threading")
DRIVERS = ("harness.cli", "harness.client", "harness.gevent_client", "harness.runner", "harness.locust_user",
           "harness.pytest_plugin", "harness.transports", "harness.targets", "monitors", "agentsim")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> set[str]:
    """Every module `module` imports (absolute names), outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from . import x` may name a module
                found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


GRAPH = _graph()


def _names(prefixes: tuple[str, ...], imported: set[str]) -> list[str]:
    return sorted(m for m in imported if any(m == p or m.startswith(p + ".") for p in prefixes))


def _all_imports(module: str) -> set[str]:
    path = next(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if _module_name(p) == module)
    return _imports(path, module)


def test_the_graph_sees_the_code():
    assert "harness.checker" in GRAPH["harness.flow"]  # a relative import is resolved
    assert "harness.flow" in GRAPH["monitors.proxy"]  # an absolute one too


def test_nothing_imports_the_composition_root():
    # `python -m harness` is the root's own launcher, like the `chatprobe` console script.
    importers = sorted(m for m, deps in GRAPH.items() if "harness.cli" in deps and m != "harness.__main__")
    assert importers == [], f"harness/cli.py is the composition root; imported by {importers}"


def test_agentsim_imports_nothing_of_the_harness():
    for module in (m for m in GRAPH if m.startswith("agentsim")):
        assert not _names(("harness", "monitors", "scenarios", "dashboards"), _all_imports(module)), module


OUTPUTS = ("harness.redact", "harness.safefile", "harness.html_report")
IO_LAYER = ("harness.transports", "harness.client", "harness.gevent_client", "harness.runner", "harness.targets",
            "harness.recorder")
# What each layer of docs/architecture.md's folder table may import of this repository, besides the `harness`
# package's own __init__. Nothing imports `scenarios` (the built-in scenarios' folder, found by its path beside
# `harness`): a project's own `scenarios` package would be taken for it, or hidden by it (harness/catalog.py).
MAY_IMPORT = {
    "the pure core": (PURE, (*PURE, *OUTPUTS)),
    "the outputs": (OUTPUTS, (*PURE, *OUTPUTS)),
    "the I/O layer": (IO_LAYER, (*PURE, *OUTPUTS, *IO_LAYER, "agentsim")),
    "the collector": (("harness.collector",), ()),
}


@pytest.mark.parametrize("layer", MAY_IMPORT)
def test_each_layer_imports_only_what_the_folder_table_lets_it(layer):
    """Not only no I/O library: the pure core imports no module of the I/O layer either (which would bring its
    libraries along), the outputs only the core, and so on, as docs/architecture.md's table says."""
    members, allowed = MAY_IMPORT[layer]
    wrong = []
    for module in (m for m in GRAPH if _names(members, {m})):
        wrong += [f"{module} -> {dep}" for dep in sorted(GRAPH[module])
                  if dep != "harness" and not _names(members, {dep}) and not _names(allowed, {dep})]
    assert wrong == [], f"{layer} imports what docs/architecture.md does not let it: {wrong}"


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_does_no_io_and_knows_no_driver(module):
    imported = _all_imports(module)
    assert not _names(IO_LIBRARIES, imported), f"{module} imports {_names(IO_LIBRARIES, imported)}"
    assert not _names(DRIVERS, imported), f"{module} imports {_names(DRIVERS, imported)}"


def test_no_import_cycles():
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(GRAPH.get(node, ())):
            if seen.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in seen:
                walk(dep, path + [dep])
        seen[node] = 2

    for module in sorted(GRAPH):
        if module not in seen:
            walk(module, [module])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_help_and_list_load_no_heavy_library_and_no_tls_library():
    """Start-up cost is measured in bench/ (BENCHMARKS.md); what keeps it low is that `--help`, `run --help` and `list`
    import no pydantic model, no client, no report library; nor a TLS library (ssl, OpenSSL's digests through secrets)
    or importlib.resources (with tempfile and zipfile), ~20% of their start-up CPU: the built-in folders are the
    packages' own paths, and ssl and secrets load where a TLS context or a key is made. Checked in a fresh
    interpreter."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io; from harness.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['list'])\n"
            "    for args in (['--help'], ['run', '--help']):\n"
            "        try:\n            main(args)\n        except SystemExit:\n            pass\n"
            "unwanted = ['pydantic', 'websockets', 'httpx', 'rich', 'jwt', 'altair', 'prometheus_client', 'yaml',\n"
            "            'ssl', '_ssl', 'secrets', 'hashlib', 'importlib.resources', 'tempfile', 'zipfile']\n"
            "print(sorted(m for m in unwanted if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_commands_do_not_scan_for_pydantic_plugins(tmp_path):
    """pydantic reads every installed distribution's entry points for plugins of its own when the first model is
    built (start-up CPU that grows with the virtualenv); the CLI switches that off unless the user set
    PYDANTIC_DISABLE_PLUGINS. A command that builds models (`check` of a one-line recording) in a fresh
    interpreter leaves pydantic's plugin table unread (None), where a scan makes it a dict."""
    import os
    import subprocess
    import sys

    recording = tmp_path / "one.jsonl"
    recording.write_text('{"t": 1.0, "dir": "send", "conn": "a", "frame": {"type": "user_message", '
                         '"payload": {"content": "hi", "message_id": "m1", "thread_id": "t1"}}}\n', encoding="utf-8")
    code = ("import sys, contextlib, io; from harness.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    code = main(['check', {str(recording)!r}])\n"
            "from pydantic.plugin import _loader\n"
            "print(code, type(_loader._plugins).__name__)")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    status, plugins = out.stdout.split()
    assert status == "1", out.stdout  # the recording's chat never answered: judged, objectives not met
    assert plugins == "NoneType", out.stdout


def test_every_dataclass_has_a_docstring():
    """A dataclass without a docstring of its own is given one at class creation: `inspect.signature` of the class,
    made into text (~0.3 M instructions a class, start-up CPU of every run, BENCHMARKS.md issue 10). Each one in
    harness/ and agentsim/ (the embedded server of a `chatprobe run`) has its own."""
    bare = []
    for package in ("harness", "agentsim"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None and any(
                        "dataclass" in ast.unparse(d) for d in node.decorator_list):
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert bare == [], "dataclasses without a docstring: " + ", ".join(bare)


def test_pydantic_reads_no_annotation_text_of_the_scenario_and_profile_models():
    """harness/scenario.py and harness/profiles.py hold every model a run validates; without `from __future__ import
    annotations` their fields' annotations are objects, which pydantic takes as they are. As text, pydantic made a
    `typing.ForwardRef` of each (a `compile()` of it) and evaluated it in the module's namespace: ~140 of them, ~0.9%
    of a one-chat run's instructions (BENCHMARKS.md, issue 10). Counted in a fresh interpreter: the ForwardRefs made
    while pydantic is on the stack, importing the two modules after what they import."""
    import subprocess
    import sys

    code = ("import sys, typing, pydantic\n"
            "from harness import catalog, checker, durations, events, eventstream, payload_checks, subprotocols\n"
            "from harness import yamlfile\n"
            "class Warm(pydantic.BaseModel):  # pydantic's one-time set-up, before the count\n"
            "    x: int = 0\n"
            "made, init = [], typing.ForwardRef.__init__\n"
            "def spy(self, arg, *args, **kwargs):\n"
            "    frame = sys._getframe(1)\n"
            "    while frame is not None and '/pydantic/' not in frame.f_code.co_filename.replace('\\\\', '/'):\n"
            "        frame = frame.f_back\n"
            "    if frame is not None:\n"
            "        made.append(arg)\n"
            "    init(self, arg, *args, **kwargs)\n"
            "typing.ForwardRef.__init__ = spy\n"
            "import harness.profiles, harness.scenario\n"
            "# Profile's private `_decoder: \"Decoder\"` names a class defined after it: text it stays\n"
            "others = [arg for arg in made if arg != 'Decoder']\n"
            "print(len(others), others[:5])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0 "), out.stdout


# In a child's code (its `s` harness.scenario, pydantic imported): each bad scenario's errors, as (loc, type) pairs.
_PRINT_ERRORS_OF = ("def errors(*bads):\n"
                    "    for bad in bads:\n"
                    "        try:\n"
                    "            s.Scenario.model_validate({'name': 'bad', **bad})\n"
                    "        except pydantic.ValidationError as err:\n"
                    "            print([(e['loc'], e['type']) for e in err.errors()])\n")


def _fresh_interpreter(code: str) -> list[str]:
    """The lines `code` prints in a fresh interpreter (what a module builds at import is not built yet there)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_models_of_steps_stages_and_think_times_are_built_only_for_a_scenario_that_gives_them():
    """pydantic builds a model's validator as its class is made: the models only some scenarios use (a step, a stage,
    a think time) were ~0.5% of a one-chat run's instructions (BENCHMARKS.md, issue 10). In a fresh interpreter,
    loading a built-in scenario that gives none of them builds none; one that gives steps, stages and a think time
    gets them validated, a mistake in each named at its place as before."""

    code = ("import pydantic\n"
            "from harness import scenario as s\n"
            "later = (s.ThinkTime, s.Stage, s.ChatStep, s.RawStep, s.ChatStepWrapper)\n"
            "plain = s.Scenario.model_validate({'name': 'plain', 'users': 2, 'message': 'hi'})\n"
            "print([m.__name__ for m in later if m.__pydantic_complete__])\n"
            "full = s.Scenario.model_validate({'name': 'full', 'think_time': '1s', 'steps': [{'chat': {'message': 'a'}},\n"
            "    {'send_raw': 'x'}]})\n"
            "print(type(full.think_time).__name__, [type(st).__name__ for st in full.steps])\n"
            "print(type(s.Scenario.model_validate({'name': 'staged', 'stages': [{'duration': '1s', 'users': 1}]})\n"
            "           .stages[0]).__name__)\n"
            + _PRINT_ERRORS_OF +
            "errors({'stages': [{'duration': '1s'}]}, {'stages': []}, {'steps': [{'chat': {'mesage': 'a'}}]},\n"
            "       {'think_time': {'min': '2s', 'max': '1s'}}, {'steps': [{'chat': {'think_time': 'x'}}]})\n")
    lines = _fresh_interpreter(code)
    assert lines == [
        "[]",
        "ThinkTime ['ChatStepWrapper', 'RawStep']",
        "Stage",
        "[(('stages', 0), 'value_error')]",
        "[(('stages',), 'too_short')]",
        "[(('steps', 0, 'chat', 'chat', 'mesage'), 'extra_forbidden')]",
        "[(('think_time',), 'value_error')]",
        "[(('steps', 0, 'chat', 'chat', 'think_time', 'min'), 'value_error'), "
        "(('steps', 0, 'chat', 'chat', 'think_time', 'max'), 'value_error')]",
    ], lines


def test_the_objectives_models_are_built_only_for_a_scenario_or_flag_that_gives_objectives():
    """The objectives' models (Stat, Bound, RatioBound, Objectives) were ~0.8% of a one-chat run's instructions
    (BENCHMARKS.md, issue 10), and a run by the default objectives validates none. In a fresh interpreter, a scenario
    that gives no objectives is judged by defaults equal to the validated ones (`violations.max` 0.0, a float, as
    validation made it) with none of the four built; one that gives objectives, or an --objective, gets them
    validated, a mistake named at its place as before."""

    code = ("import pydantic\n"
            "from harness import scenario as s\n"
            "from harness.stats import compute, evaluate\n"
            "models = (s.Stat, s.Bound, s.RatioBound, s.Objectives)\n"
            "plain = s.Scenario.model_validate({'name': 'plain', 'message': 'hi'})\n"
            "judged = [(o.name, o.limit, type(o.limit).__name__, o.ok) for o in evaluate(compute([]), plain.objectives)]\n"
            "print([m.__name__ for m in models if m.__pydantic_complete__], judged)\n"
            "print(plain.objectives == s.Objectives(), repr(plain.objectives) == repr(s.Objectives()),\n"
            "      plain.objectives.model_fields_set, plain.model_dump()['objectives'] == s.Objectives().model_dump())\n"
            "given = s.Scenario.model_validate({'name': 'given', 'objectives': {'violations': {'max': 3}}})\n"
            "print(given.objectives.violations, s.apply_overrides(plain, ['passed_ratio.min=0.5']).objectives.passed_ratio)\n"
            + _PRINT_ERRORS_OF +
            "errors({'objectives': {'time_to_first_event': {'p95': 'soon'}}}, {'objectives': {'violatons': {}}},\n"
            "       {'objectives': 3}, {'objectives': {'passed_ratio': {'min': 2}}})\n")
    lines = _fresh_interpreter(code)
    assert lines == [
        "[] [('time_to_first_event.p95', 2.0, 'float', False), ('missing_events_ratio.max', 0.0, 'float', True), "
        "('violations.max', 0.0, 'float', True), ('passed_ratio.min', 1.0, 'float', False), "
        "('error_ratio.max', 0.0, 'float', True)]",
        "True True set() True",
        "max=3.0 min=None max=None min=0.5",
        "[(('objectives', 'time_to_first_event', 'p95'), 'value_error')]",
        "[(('objectives', 'violatons'), 'extra_forbidden')]",
        "[(('objectives',), 'model_type')]",
        "[(('objectives', 'passed_ratio', 'min'), 'less_than_equal')]",
    ], lines


def test_the_scenario_json_schema_describes_the_fields_validated_on_first_use():
    """`Scenario.model_json_schema()` (an editor's or a linter's view of a scenario file) describes steps, stages and
    think times as a file gives them, though their validators are built on first use (BuiltWhenUsed): a
    well-formed scenario with all three is valid under the schema, and the schema refuses a stage with a misspelt field
    and a step that is neither a chat nor a raw send, as the loader does."""
    import jsonschema

    from harness.scenario import Scenario

    schema = Scenario.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"name": "full", "think_time": {"min": 1, "max": 2},
            "steps": [{"chat": {"message": "a"}}, {"send_raw": "x"}], "stages": [{"duration": 1, "users": 2}]}
    assert list(validator.iter_errors(good)) == []
    Scenario.model_validate(good)
    for bad in ({"name": "b", "stages": [{"duration": 1, "userz": 2}]}, {"name": "b", "steps": [{"wait": 1}]},
                {"name": "b", "think_time": {"min": 1, "max": 2, "mean": 3}}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(pydantic.ValidationError):
            Scenario.model_validate(bad)


def test_a_check_set_loads_with_the_first_profile_that_names_it():
    """AG-UI's payload checks (harness/payload_checks.py, ~0.5% of a one-chat run's start-up instructions) load when a
    profile naming `agui` is read, as its decoder is made (harness/checksets.py's registry), not with the profiles
    module: reading netra leaves them unloaded, and a netra run never loads them. In a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from harness.profiles import load_profile\n"
            "load_profile('netra')\n"
            "before = 'harness.payload_checks' in sys.modules\n"
            "decoded = load_profile('ag-ui').decode('{\"type\": \"RUN_STARTED\", \"threadId\": \"t\", \"runId\": \"r\"}', 0.0)\n"
            "from harness import payload_checks, profiles\n"
            "print(before, profiles.CHECKS['agui'] is payload_checks.AGUI, type(decoded).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "Event"], out.stdout


def test_the_client_reaches_the_recorder_only_through_the_transport_hooks():
    """`--record`'s hooks are the transports' no-op RecordingHooks (transports/base.py), which the recorder's wrapper
    overrides: the client imports nothing of the recorder (a run without --record pays no import of it) and asks no
    transport what it is. Checked in the import graph and in a fresh interpreter."""
    import subprocess
    import sys

    reached, todo = set(), ["harness.client"]
    while todo:
        for dep in GRAPH[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert "harness.recorder" not in reached, "harness.client imports harness.recorder (directly or not)"
    tree = ast.parse((ROOT / "harness" / "client.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "RecordingTransport" not in names, "harness/client.py names the recorder's wrapper in code"
    code = "import sys, harness.client; print('harness.recorder' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "import harness.client imported harness.recorder"


def test_a_run_without_record_imports_no_recorder(tmp_path):
    """`chatprobe run` without --record loads neither the recorder nor the recordings' reader (~17 ms of imports of
    every run's start-up, BENCHMARKS.md): a one-chat run against the embedded agentsim in a fresh interpreter, then
    the same with --record, which does load it (so the check can see a recorder import at all)."""
    import subprocess
    import sys

    scenario = tmp_path / "one.yaml"
    scenario.write_text('name: one\nusers: 1\nchats_per_user: 1\nmessage: "hi"\n', encoding="utf-8")

    def loaded(*extra: str) -> str:
        code = ("import sys, contextlib, io; from harness.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                f"    code = main(['run', {str(scenario)!r}, '--quiet', *{list(extra)!r}])\n"
                "print(code, sorted(m for m in ('harness.recorder', 'harness.recordings') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert loaded() == "0 []"
    assert loaded("--record", str(tmp_path / "rec")) == "0 ['harness.recorder', 'harness.recordings']"


def test_a_run_on_picows_loads_no_aiofastnet_and_leaves_it_importable(tmp_path):
    """picows imports aiofastnet at its top when it is installed (~9 ms of every run's start-up, BENCHMARKS.md), for
    connections chatprobe makes with `use_aiofastnet=False`: a one-chat run over picows (against the embedded agentsim)
    in a fresh interpreter loads picows and not aiofastnet, and once main() has returned the process imports it as
    before."""
    import subprocess
    import sys

    scenario = tmp_path / "one.yaml"
    scenario.write_text('name: one\nusers: 1\nchats_per_user: 1\nmessage: "hi"\n', encoding="utf-8")
    code = ("import sys, contextlib, io; from harness.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    code = main(['run', {str(scenario)!r}, '--quiet'])\n"
            "loaded = [m for m in ('picows', 'aiofastnet') if sys.modules.get(m) is not None]\n"
            "import aiofastnet\n"
            "print(code, loaded, aiofastnet.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 ['picows'] aiofastnet", out.stdout


def test_a_run_against_a_server_compiles_no_redaction_pattern_and_loads_no_emoji_table(tmp_path):
    """Start-up CPU of every `chatprobe run` (BENCHMARKS.md, issue 10): harness/redact.py's patterns (~3.5 ms to
    compile) are compiled on first use, each where a substring test says it could match, and the console reads no
    `:name:` emoji codes (rich's table of them, ~2.5 ms, loads with the first text that could hold one). The patterns
    only a refusal, a hint or a rare option reads (a k6 threshold's expression, a clock-like duration, a `--header-env`
    variable's name, a descriptor's path, a JSON file's surrogate pairs) are compiled where they are used, not at
    import. `list`, `run --help` and a one-chat run against a server of its own (`--auth none`, as bench/vs_k6.py runs
    it), in a fresh interpreter, compile none of them and load no emoji table."""
    import selectors
    import subprocess
    import sys

    scenario = tmp_path / "one.yaml"
    scenario.write_text('name: one\nusers: 1\nchats_per_user: 1\nmessage: "hi"\n', encoding="utf-8")
    sim = subprocess.Popen([sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0",
                            "--tool-latency", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           cwd=ROOT)
    try:
        assert sim.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(sim.stdout, selectors.EVENT_READ)
            assert sel.select(30), "agentsim did not start within 30 s"
        line = sim.stdout.readline()
        assert "listening on" in line, line
        url = line.split("listening on", 1)[1].strip()
        code = ("import re, sys, contextlib, io\n"
                "compile, made = re.compile, []\n"
                "def spy(pattern, flags=0):\n"
                "    if sys._getframe(1).f_code.co_filename.replace('\\\\', '/').endswith('harness/redact.py'):\n"
                "        made.append(pattern)\n"
                "    return compile(pattern, flags)\n"
                "re.compile = spy\n"
                "sre_compile, compiled = re._compiler.compile, []\n"
                "def sre_spy(pattern, flags=0):\n"
                "    compiled.append(pattern)\n"
                "    return sre_compile(pattern, flags)\n"
                "re._compiler.compile = sre_spy  # what re.compile and re.fullmatch(text, ...) compile with\n"
                "from harness import durations, safefile, scenario, targets, yamlfile\n"
                "from harness.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                "    main(['list'])\n"
                "    try:\n        main(['run', '--help'])\n    except SystemExit:\n        pass\n"
                f"    code = main(['run', {str(scenario)!r}, '--target', {url!r}, '--auth', 'none', '--quiet'])\n"
                "rare = {getattr(p, 'pattern', p) for p in (scenario._K6_EXPR, durations._CLOCK, targets._ENV_NAME,\n"
                "        safefile._OWN_DESCRIPTOR, yamlfile._SURROGATE_PAIR)}\n"
                "print(code, len(made), len(rare & set(compiled)), 'rich._emoji_codes' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        sim.kill()
        sim.wait(timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 0 0 False", out.stdout  # exit 0, no pattern compiled, no emoji table


def _folder_table() -> dict[str, set[str]]:
    """docs/architecture.md's "Folders and import rules": each `harness/` row's first cell -> the modules it names."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Folders and import rules", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        first = line.split("|")[1].strip() if line.startswith("| `harness/") else ""
        if first:
            names = [n.removeprefix("harness/").removesuffix(".py").rstrip("/") for n in re.findall(r"`([^`]+)`", first)]
            rows[first] = {f"harness.{n}" for n in names if n}
    return rows


def test_the_folder_table_places_every_harness_module_once():
    rows = _folder_table()
    placed = [m for names in rows.values() for m in names]
    assert len(placed) == len(set(placed)), f"placed twice: {sorted(m for m in placed if placed.count(m) > 1)}"
    modules = {m for m in GRAPH if m.count(".") == 1 and m.startswith("harness.") and m != "harness.__main__"}
    modules = {m for m in modules if not m.startswith("harness.transports.")} | {"harness.transports"}
    assert set(placed) == modules, (f"docs/architecture.md places modules that do not exist: {set(placed) - modules}; "
                                    f"and none of these: {modules - set(placed)}")
    pure = next(names for first, names in rows.items() if "pure core" in first)
    assert pure == set(PURE), f"docs/architecture.md's pure core differs from PURE: {pure ^ set(PURE)}"


@pytest.mark.parametrize("package", ["monitors", "agentsim"])
def test_the_folder_table_names_every_module_of_monitors_and_agentsim(package):
    """The `monitors/` and `agentsim/` rows name their modules (and `rules/`): the ones that exist, all of them."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Folders and import rules", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| `{package}/`"))
    named = set(re.findall(r"`([^`]+)`", row.split("|")[1])) - {f"{package}/"}
    there = {p.stem for p in (ROOT / package).glob("*.py") if p.stem not in ("__init__", "__main__")}
    there |= {f"{p.name}/" for p in (ROOT / package).iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert named == there, (f"docs/architecture.md's {package}/ row names what does not exist: {named - there}; "
                            f"and not these: {there - named}")


def test_the_pure_core_is_held_to_mypys_strict_flags():
    import tomllib

    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    strict = next(o for o in overrides if o.get("disallow_untyped_defs"))
    assert set(strict["module"]) == set(PURE)
