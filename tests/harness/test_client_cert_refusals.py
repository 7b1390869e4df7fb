"""A client certificate or key that cannot be used (encrypted, not the certificate's, not PEM, not there, a key
without a certificate) is a usage error before anything connects: exit 2, one line naming the file and the flag (or
the config file's line and key), never a prompt for a passphrase, never the key's content."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from .test_cli_ux import ENV, run_cli
from .test_config_refusals import one_error

TARGET = "wss://127.0.0.1:9/agent"


def pems(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    leaf, other = ca.issue_cert("probe@example.com"), ca.issue_cert("other@example.com")
    paths = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "other_key", "encrypted", "combined")}
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(paths["combined"]))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    paths["encrypted"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.BestAvailableEncryption(b"passphrase")))
    return {name: str(path) for name, path in paths.items()}


def key_lines(*paths: str) -> list[str]:
    """The base64 lines of the PEM files (the key material no output may show)."""
    return [line for p in paths for line in Path(p).read_text().splitlines() if line and not line.startswith("-")]


CASES = {
    # name: (flags, the flag named, the file named, the words)
    "encrypted": (lambda p: ["--client-cert", p["cert"], "--client-key", p["encrypted"]], "--client-key", "encrypted",
                  "encrypted (passphrase-protected)"),
    "mismatched": (lambda p: ["--client-cert", p["cert"], "--client-key", p["other_key"]], "--client-key",
                   "other_key", "not the certificate's"),
    "key-not-pem": (lambda p: ["--client-cert", p["cert"], "--client-key", p["cert"]], "--client-key", "cert",
                    "no PEM private key"),
    "no-key-beside": (lambda p: ["--client-cert", p["cert"]], "--client-cert", "cert",
                      "give the key's file with --client-key"),
    "cert-not-pem": (lambda p: ["--client-cert", p["key"], "--client-key", p["key"]], "--client-cert", "key",
                     "no PEM certificate"),
    "missing": (lambda p: ["--client-cert", p["cert"], "--client-key", p["cert"] + ".gone"], "--client-key",
                "cert.pem.gone", "No such file"),
    "directory": (lambda p: ["--client-cert", str(Path(p["cert"]).parent)], "--client-cert", "", "not a regular file"),
    "key-alone": (lambda p: ["--client-key", p["key"]], "--client-key", "key", "give the certificate with --client-cert"),
    "empty": (lambda p: ["--client-cert", ""], "--client-cert", "", "an empty path"),
}


@pytest.mark.parametrize("case", CASES)
def test_run_refuses_a_client_certificate_it_cannot_use_naming_the_file_and_flag(tmp_path, case):
    make_flags, flag, file, words = CASES[case]
    p = pems(tmp_path)
    proc = run_cli("run", "basic", "--target", TARGET, "--ca-file", p["cert"], *make_flags(p))
    err = one_error(proc, flag, words)
    if file:
        assert f"{tmp_path}/{file}" in err, err
    for line in key_lines(p["key"], p["other_key"], p["encrypted"]):
        assert line not in proc.stdout + proc.stderr


def test_run_takes_the_certificate_and_key_in_one_file_or_two(tmp_path):
    """Both forms are taken (the run then fails to connect: nothing listens on port 9), never refused as usage."""
    p = pems(tmp_path)
    for flags in (["--client-cert", p["combined"]], ["--client-cert", p["cert"], "--client-key", p["key"]]):
        proc = run_cli("run", "basic", "--target", TARGET, "--ca-file", p["cert"], *flags)
        assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])


def test_a_monitor_config_names_the_file_line_and_key(tmp_path):
    p = pems(tmp_path)
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  prod:\n    url: wss://127.0.0.1:9/agent\n    client_cert: cert.pem\n"
                      "    client_key: encrypted.pem\n")
    proc = run_cli("monitor", "--config", str(config), "--once")
    one_error(proc, f"{config}:5", "targets.prod.client_key", f"{tmp_path}/encrypted.pem", "encrypted")
    for line in key_lines(p["encrypted"]):
        assert line not in proc.stdout + proc.stderr


def test_a_client_certificate_flag_beside_a_monitor_config_names_its_key(tmp_path):
    p = pems(tmp_path)
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  prod:\n    url: wss://127.0.0.1:9/agent\n")
    one_error(run_cli("monitor", "--config", str(config), "--once", "--client-cert", p["combined"]),
              "--client-cert", "client_cert")


def test_the_pytest_plugin_names_its_own_flag(tmp_path):
    p = pems(tmp_path)
    (tmp_path / "test_x.py").write_text("def test_x(chatprobe):\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--chatprobe-target", TARGET,
                           "--chatprobe-client-cert", p["cert"], "--chatprobe-client-key", p["encrypted"],
                           str(tmp_path / "test_x.py")], capture_output=True, text=True, timeout=120, env=ENV,
                          cwd=tmp_path)
    assert proc.returncode == 4, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "--chatprobe-client-key" in proc.stderr and "passphrase-protected" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_locust_user_names_its_own_flag(tmp_path, refused_port):
    from .test_option_fuzz import ENV as LOCUST_ENV
    from .test_option_fuzz import LOCUST, ROOT

    p = pems(tmp_path)
    argv = [str(LOCUST), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u", "1", "-r", "1", "-t",
            "2s", "--host", f"wss://127.0.0.1:{refused_port()}/ws", "--chatprobe-client-cert", p["cert"],
            "--chatprobe-client-key", p["other_key"]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=LOCUST_ENV, cwd=ROOT)
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith("chatprobe: error:")]
    assert proc.returncode == 2 and "Traceback" not in out, (proc.returncode, out[-3000:])
    assert len(lines) == 1 and "--chatprobe-client-key" in lines[0] and "not the certificate's" in lines[0], lines
    assert p["other_key"] in lines[0]
    for line in key_lines(p["other_key"], p["key"]):
        assert line not in out


def one_pem_block_of(path: Path, size: int) -> str:
    """A file of one `BEGIN CERTIFICATE` line and then `size` bytes of base64 with no end: OpenSSL holds a PEM block's
    whole base64 in memory before it finds the block unended (300 MB of it took 500 MB)."""
    line = b"A" * 64 + b"\n"
    with path.open("wb") as f:
        f.write(b"-----BEGIN CERTIFICATE-----\n")
        f.write(line * (size // len(line) + 1))
    return str(path)


@pytest.mark.parametrize("flag", ["--client-cert", "--client-key", "--ca-file"])
def test_a_pem_file_over_its_bound_is_refused_unread_naming_the_file_and_flag(tmp_path, flag):
    """FAILED on the old code: the file was read whole by OpenSSL (its memory the file's and more), and refused only
    as no PEM certificate or key. Now a CA file, certificate or key past MAX_PEM_FILE is exit 2 saying its size."""
    from harness.transports.base import MAX_PEM_FILE

    p = pems(tmp_path)
    huge = one_pem_block_of(tmp_path / "huge.pem", MAX_PEM_FILE + 1)
    flags = {"--client-cert": ["--client-cert", huge, "--client-key", p["key"]],
             "--client-key": ["--client-cert", p["cert"], "--client-key", huge],
             "--ca-file": ["--ca-file", huge]}[flag]
    proc = run_cli("run", "basic", "--target", TARGET, *flags)
    err = one_error(proc, flag, huge, "over the 16 MiB a PEM file may be")
    assert "Traceback" not in proc.stderr, err


def test_a_key_path_with_a_nul_in_a_monitor_config_names_the_keys_line_and_field(tmp_path):
    """FAILED on the old code: a `client_key` holding a NUL (YAML's "\\0") made the path check raise ValueError, taken
    for the certificate's: the error named line 4, `client_cert`, and the certificate's path. Now the key's own line,
    field and path."""
    pems(tmp_path)
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  prod:\n    url: wss://127.0.0.1:9/agent\n    client_cert: cert.pem\n"
                      '    client_key: "ke\\0y.pem"\n')
    proc = run_cli("monitor", "--config", str(config), "--once")
    err = one_error(proc, f"{config}:5", "targets.prod.client_key", "NUL")
    assert "client_cert" not in err, err
