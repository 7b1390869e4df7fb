"""`chatprobe run` with report paths that are not plain files: the device stays a device, a FIFO gets the report,
a failed write is one line and exit 2."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=240,
                          cwd=ROOT, env={**os.environ, "NO_COLOR": "1"}, check=False)


def test_json_to_dev_full_is_exit_2_and_the_device_survives():
    before = os.lstat("/dev/full")
    proc = run_cli("run", "basic", "--json", "/dev/full")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--json /dev/full" in proc.stderr and "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = os.lstat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_junit_to_a_fifo_and_json_through_a_symlink(tmp_path):
    fifo = tmp_path / "junit.pipe"
    os.mkfifo(fifo)
    real = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:  # blocks until chatprobe opens the FIFO to write
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = run_cli("run", "basic", "--junit", str(fifo), "--json", str(link))
    if not got:  # the run failed before opening the FIFO: release the reader
        with open(fifo, "wb"):
            pass
    reader.join(30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert got and got[0].startswith(b"<?xml") and b'<testcase name="basic"' in got[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert json.loads(real.read_text())["scenarios"][0]["scenario"] == "basic"


def test_a_bad_url_with_credentials_is_shown_without_them():
    proc = run_cli("run", "basic", "--target", "wss://user:hunter22@example.invalid:99999/ws?token=abc123xyz")
    assert proc.returncode == 2
    assert "--target" in proc.stderr and "example.invalid" in proc.stderr
    assert "hunter22" not in proc.stderr + proc.stdout and "abc123xyz" not in proc.stderr + proc.stdout
