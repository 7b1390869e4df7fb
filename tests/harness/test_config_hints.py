"""A scenario key a user misspells, or brings from k6 or Locust, is refused (exit 2, one line) with the key meant."""
from __future__ import annotations

import pytest

from harness.errors import ConfigError

from .test_cli_ux import run_cli
from .test_config_refusals import one_error


@pytest.mark.parametrize("line,field,meant", [
    ("chat_per_user: 2", "chat_per_user", "chats_per_user"),
    ("expect: {first_event_limt: 1s}", "expect.first_event_limt", "first_event_limit"),
    ("objectives: {error_rate: {max: 0.01}}", "objectives.error_rate", "error_ratio"),
    ("stages: [{duration: 5s, target: 5}]", "stages.0.target", "users"),  # k6's name for it
    ("thresholds: {}", "thresholds", "objectives"),
])
def test_a_misspelt_or_foreign_key_says_which_key_was_meant(tmp_path, line, field, meant):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\nusers: 1\n{line}\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:3: field '{field}'", f"(did you mean '{meant}'?)")


def test_a_key_like_none_gets_no_guess(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nusers: 1\nflux_capacitor: 3\n")
    assert "did you mean" not in one_error(run_cli("run", str(scenario)), "field 'flux_capacitor'")


@pytest.mark.parametrize("text,line,field,meant", [
    # A misspelt required key is two problems to pydantic (the key it does not take, the key it misses): the line
    # names the misspelt key and the key meant, not "Field required" for a key the user believes they wrote.
    ("targets:\n  a: {urll: ws://127.0.0.1:9/ws}\n", 2, "targets.a.urll", "url"),
    ("target:\n  a: {url: ws://127.0.0.1:9/ws}\n", 1, "target", "targets"),
])
def test_a_misspelt_required_monitor_key_names_the_key_meant(tmp_path, text, line, field, meant):
    config = tmp_path / "m.yaml"
    config.write_text(text)
    out = one_error(run_cli("monitor", "--once", "--config", str(config)), f"{config}:{line}: field '{field}'",
                    f"(did you mean '{meant}'?)")
    assert "Field required" not in out


def test_a_misspelt_required_scenario_key_names_the_key_meant(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("nmae: s\nusers: 1\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:1: field 'nmae'", "(did you mean 'name'?)")


@pytest.mark.parametrize("value", ['"yes"', '"no"', "1", "0"])
def test_a_monitor_switch_is_taken_as_yaml_writes_it(tmp_path, value):
    """`insecure` turns TLS verification off: a quoted "no" or a 0 was read as a boolean either way, silently. Taken
    as YAML writes it (true/false), as a scenario's switches are."""
    config = tmp_path / "m.yaml"
    config.write_text(f"targets:\n  a:\n    url: wss://127.0.0.1:9/ws\n    insecure: {value}\n")
    one_error(run_cli("monitor", "--once", "--config", str(config)), f"{config}:4: field 'targets.a.insecure'")


@pytest.mark.parametrize("line,field,read", [
    ("message: no", "message", "false"),  # the Norway problem: YAML 1.1 reads the word as a boolean
    ("name: on", "name", "true"),
])
def test_a_word_yaml_reads_as_a_boolean_says_to_quote_it(tmp_path, line, field, read):
    scenario = tmp_path / "s.yaml"
    body = "name: s\nusers: 1\n" if field != "name" else "users: 1\nmessage: hi\n"
    scenario.write_text(f"{body}{line}\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:3: field '{field}'", f"the boolean {read}", "in quotes")


def test_a_scenario_written_by_json_dump_reads_its_escaped_emoji(tmp_path):
    """JSON is a scenario's format too, and `json.dump` escapes a character past U+FFFF as a surrogate pair
    (`\\ud83d\\ude00`), which YAML's escapes refused ("found invalid Unicode character escape code", exit 2). The pair
    reads as the character; an escaped backslash before `u` stays text; a mistake further on is still named by its
    line."""
    import json

    from harness.scenario import Scenario
    from harness.yamlfile import load_model

    scenario = tmp_path / "s.json"
    message = "Plan my trip \U0001F600 to Zürich, not \\ud83d\\ude00"
    scenario.write_text(json.dumps({"name": "s", "users": 1, "message": message}, indent=1))
    assert load_model(Scenario, scenario).message == message
    scenario.write_text(json.dumps({"name": "s", "message": message, "chat_per_user": 2}, indent=1))
    one_error(run_cli("run", str(scenario)), f"{scenario}:4: field 'chat_per_user'", "(did you mean 'chats_per_user'?)")


def test_surrogate_pairs_are_joined_in_json_only_never_in_yaml_text(tmp_path):
    r"""Only a JSON file's pairs are escapes to join (every JSON string is double-quoted). In a YAML file a
    single-quoted, plain or block scalar holds `\ud83d\ude00` as twelve characters of text, which a rewrite of the
    whole file silently turned into other text beside one double-quoted pair; YAML's own escapes do not pair, so a
    double-quoted one stays YAML's error there, naming its field."""
    import json

    from harness.scenario import Scenario
    from harness.yamlfile import load_model

    pair = "\\ud83d\\ude00"  # as written in the file: twelve characters
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\n# {pair}\nsteps:\n  - chat: {{message: '{pair}'}}\n"
                        f"  - chat: {{message: plain {pair}}}\n  - chat:\n      message: |\n        {pair}\n")
    assert [step.chat.message for step in load_model(Scenario, scenario).steps] == [pair, f"plain {pair}", f"{pair}\n"]
    scenario.write_text(scenario.read_text() + f'  - chat: {{message: "esc {pair}"}}\n')
    with pytest.raises(ConfigError, match=r"s\.yaml:9: field 'steps\.3\.chat\.message': not valid YAML: .*escape"):
        load_model(Scenario, scenario)
    as_json = tmp_path / "s.json"
    as_json.write_text(json.dumps({"name": "s", "steps": [{"chat": {"message": "esc \U0001F600 \\ud83d\\ude00"}}]}))
    assert load_model(Scenario, as_json).steps[0].chat.message == "esc \U0001F600 \\ud83d\\ude00"


def test_a_lone_surrogate_after_escaped_pairs_is_named_by_its_own_field(tmp_path):
    """Pairs joined earlier on the line shorten it: the mistake further on (a lone surrogate, which no pairing
    reads) is still named by its line and the field the scanner was reading (in a JSON flow mapping, whose keys the
    scanner reads ahead, the outer one), from the text composed, never one the rewrite's shift lands in."""
    from harness.scenario import Scenario
    from harness.yamlfile import load_model

    pair = "\\ud83d\\ude00"
    scenario = tmp_path / "s.json"
    scenario.write_text('{"name": "s",\n"steps": [{"chat": {"message": "' + pair * 12 + '", "repeat": 1, '
                        '"think_time": "\\ud83d"}}]}\n')
    with pytest.raises(ConfigError, match=r"s\.json:2: field 'steps': not valid YAML: found invalid Unicode"):
        load_model(Scenario, scenario)
