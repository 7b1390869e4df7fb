"""Reports land on what a path points at, on real paths: symlinks, FIFOs, devices, regular files."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.safefile import writable_problem, write_report


def test_regular_file_is_replaced_atomically(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old report")
    os.chmod(target, 0o640)
    before = os.stat(target)
    with open(target) as reader:  # a reader that opened the old file keeps reading it whole
        write_report(target, "new report")
        assert reader.read() == "old report"
    after = os.stat(target)
    assert target.read_text() == "new report"
    assert after.st_ino != before.st_ino  # a new inode renamed over the old one, not an in-place rewrite
    assert stat.S_IMODE(after.st_mode) == 0o640  # the mode of the file it replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left behind


def test_new_file_gets_an_ordinary_mode_and_its_directories(tmp_path):
    target = tmp_path / "a" / "b" / "r.xml"
    write_report(target, "<x/>")
    assert target.read_text() == "<x/>"
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o644 == 0o644 & ~0o022  # not mkstemp's 0600


def test_symlink_is_followed_and_kept(tmp_path):
    real = tmp_path / "reports" / "latest.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "r.json"
    link.symlink_to(real)
    write_report(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"


def test_dangling_symlink_creates_its_target(tmp_path):
    real = tmp_path / "out.json"
    link = tmp_path / "r.json"
    link.symlink_to(real)
    write_report(link, "made")
    assert link.is_symlink() and real.read_text() == "made"


def test_a_dangling_symlink_into_a_missing_directory_makes_no_directory(tmp_path):
    """A planted link must not make a run create directories wherever it points (as root: anywhere)."""
    link = tmp_path / "r.json"
    link.symlink_to(tmp_path / "nowhere" / "deeper" / "x.json")
    assert "whose directory does not exist" in (writable_problem(str(link)) or "")
    with pytest.raises(FileNotFoundError):
        write_report(link, "made")
    assert not (tmp_path / "nowhere").exists()
    plain = tmp_path / "reports" / "r.json"  # a plain path still gets its directories
    write_report(plain, "made")
    assert plain.read_text() == "made"


def test_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    # Big enough to fill the pipe buffer several times: the writer must wait for the reader, not fail.
    payload = ("x" * 1023 + "\n") * 1024

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    write_report(fifo, payload, stall_timeout=20)
    reader.join(20)
    assert not reader.is_alive()
    assert got == [payload.encode()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO


def test_fifo_without_a_reader_is_a_clean_error(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as exc:
        write_report(fifo, "{}", stall_timeout=0.3)
    assert exc.value.errno == errno.ENXIO and "no reader" in exc.value.strerror
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dev_null_stays_a_device():
    write_report("/dev/null", "{}" * 1000)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_dev_full_is_a_clean_oserror_and_the_device_stays():
    with pytest.raises(OSError) as exc:
        write_report("/dev/full", "{}")
    assert exc.value.errno == errno.ENOSPC
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    assert os.major(os.lstat("/dev/full").st_rdev) == 1  # the same device node, not a file put in its place


def test_symlink_to_a_device_writes_the_device(tmp_path):
    link = tmp_path / "r.json"
    link.symlink_to("/dev/full")
    with pytest.raises(OSError) as exc:
        write_report(link, "{}")
    assert exc.value.errno == errno.ENOSPC
    assert link.is_symlink() and stat.S_ISCHR(os.lstat("/dev/full").st_mode)


def test_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_report(tmp_path, "{}")


def test_dev_stdout_redirected_to_a_file_is_appended_to(tmp_path):
    # /dev/stdout of a child whose stdout is a file: the report goes after what it printed, into the same file.
    out = tmp_path / "stdout.txt"
    code = ("import sys; print('printed first', flush=True); "
            "from harness.safefile import write_report; write_report('/dev/stdout', 'the report\\n')")
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert out.read_text() == "printed first\nthe report\n"


def test_writable_problem(tmp_path):
    assert writable_problem("/dev/null") is None
    assert writable_problem(str(tmp_path)) == "is a directory"
    assert writable_problem(str(tmp_path / "new" / "r.json")) is None
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert writable_problem(str(fifo)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unprivileged_user_writes_a_writable_file_in_a_read_only_directory_and_dev_null():
    import shutil
    import subprocess
    import sys
    import tempfile

    base = tempfile.mkdtemp(prefix="cp-ro-")
    try:
        os.chmod(base, 0o755)  # others may enter, not create
        report = Path(base, "r.json")
        report.write_text("old")
        os.chmod(report, 0o666)
        # Imports first: the interpreter's own files may not be readable by the unprivileged user.
        code = ("import os, sys; from harness.safefile import write_report, writable_problem; "
                "os.setgid(65534); os.setuid(65534); "
                "assert writable_problem('/dev/null') is None, writable_problem('/dev/null'); "
                "assert writable_problem(sys.argv[1]) is None; "
                "assert writable_problem(os.path.join(os.path.dirname(sys.argv[1]), 'new.json')); "
                "write_report('/dev/null', 'x'); write_report(sys.argv[1], 'new')")
        proc = subprocess.run([sys.executable, "-c", code, str(report)], capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[2], check=False)
        assert proc.returncode == 0, proc.stderr
        assert report.read_text() == "new"
    finally:
        shutil.rmtree(base)


# A child that loads chatprobe as root and then runs as another user (`sudo -u`, a container's user handed the
# runtime's pipe): its standard output is a pipe of root's, which the kernel will not open again by its name for it.
_AS_NOBODY = ("import os, sys; from harness.safefile import write_report; "
              "os.setgid(65534); os.setuid(65534); ")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_report_to_standard_output_of_another_user_is_written_on_the_descriptor():
    """`--json -` as another user than the one who made the pipe: opening /dev/stdout again is EACCES (the pipe is
    root's, mode 0600), so the report was 'Permission denied', exit 2 after a passing run. It is written on the
    descriptor the process was given."""
    import subprocess
    import sys

    for name in ("-", "/dev/stdout", "/proc/self/fd/1"):
        proc = subprocess.run([sys.executable, "-c", _AS_NOBODY + "write_report(sys.argv[1], 'the report\\n' * 5000)",
                               name], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2], check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout == "the report\n" * 5000, name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_report_on_a_descriptor_nobody_reads_gives_up_at_the_stall_timeout():
    """Written on the descriptor itself (its blocking mode is the pipe's, shared with whoever made it), a reader that
    takes nothing still ends the write at the stall timeout, not never."""
    import subprocess
    import sys
    import time

    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", _AS_NOBODY + "write_report('-', b'x' * (4 << 20), "
                               "stall_timeout=0.5)"], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2], check=False)
        took = time.monotonic() - t0
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 1 and "the reader took nothing for 0.5s" in proc.stderr, proc.stderr
    assert took < 30, took


# A process that ends at once mid-write: `run`'s second signal while its reports are written (the first one taken), sent
# as the report's temporary file is synced, before it is renamed over the report.
_SECOND_SIGNAL_MID_WRITE = """
import os, signal, sys
from harness.cli import _Interrupt
from harness.safefile import write_report

interrupt = _Interrupt(what="the chats in flight")
with interrupt.installed():
    os.kill(os.getpid(), signal.SIGINT)
    assert interrupt.signal == signal.SIGINT

    def at(frame, event, arg):
        if event == "c_call" and arg is os.fsync:
            os.kill(os.getpid(), signal.SIGTERM)

    sys.setprofile(at)
    write_report(sys.argv[1], b"{}" * 100_000)
    sys.setprofile(None)
print("not ended", flush=True)
"""


def test_a_report_cut_by_a_second_signal_leaves_no_temporary_file(tmp_path):
    """A second SIGINT or SIGTERM ends the process with os._exit, past the `except` that deletes a report's temporary
    file: it stayed beside the report, half of it, as `.out.json.XXXX.tmp`."""
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-c", _SECOND_SIGNAL_MID_WRITE, str(out)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 130, proc.stderr
    assert "SIGTERM again: ending now" in proc.stderr and "not ended" not in proc.stdout, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.iterdir())
