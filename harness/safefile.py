"""Write a report where a user pointed without destroying what is there: a regular file is replaced atomically
(through a symlink: its target), a FIFO or a character device is opened and written to, never replaced."""
from __future__ import annotations

import errno
import os
import re
import select
import socket
import stat
import sys
import tempfile
import time
from contextlib import suppress

# How long a FIFO may go without a reader, or a reader without reading, before the write gives up.
STALL_TIMEOUT = 60.0
# Paths the kernel makes up (/dev/stdout, /proc/self/fd/1): whatever they lead to is written in place, never
# replaced (replacing the file behind /dev/stdout would cut it off from the shell that redirected into it).
_IN_PLACE_ROOTS = ("/dev/", "/proc/")


def write_report(path: str | os.PathLike[str], data: str | bytes, *, stall_timeout: float = STALL_TIMEOUT) -> None:
    """Write `data` to `path`, as every report writer does. Raises OSError (with strerror) when it cannot."""
    if isinstance(data, str):
        # Lone surrogates cannot be encoded; they are escaped rather than crash a report at the very end.
        data = data.encode("utf-8", "backslashreplace")
    p = os.fspath(path)
    if p == "-":  # standard output (`--json - | jq`): written as /dev/stdout is, in place, after what was printed
        with suppress(OSError, ValueError):
            sys.stdout.flush()
        p = "/dev/stdout"
    try:
        st: os.stat_result | None = os.stat(p)  # follows symlinks: the thing the report lands on
    except FileNotFoundError:
        st = None  # nothing there yet (or a dangling symlink: its target is created)
    if st is not None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), p)
        if _kernel_setting(p, st):
            raise OSError(errno.EINVAL, _KERNEL_SETTING, p)
        if stat.S_ISBLK(mode):
            # A report written over a disk would destroy it; nobody means that.
            raise OSError(errno.EINVAL, "refusing to write a report onto a block device", p)
        if not stat.S_ISREG(mode) or _kernel_path(p):
            _write_in_place(p, data, mode, stall_timeout)
            return
    real = os.path.realpath(p)
    if st is None and os.path.islink(p) and not os.path.isdir(os.path.dirname(real) or "."):
        # A dangling symlink is followed to its target, but its target's directories are not made: a planted link
        # must not make a run create directories anywhere it points.
        raise FileNotFoundError(errno.ENOENT, "a symbolic link whose target's directory does not exist", p)
    try:
        _replace(real, data, st)
    except PermissionError:
        # A writable file in a directory we may not create files in (a single file mounted into a container):
        # rewriting it in place is the only way; not atomic, but what `>` in a shell would do.
        if st is None or not os.access(real, os.W_OK):
            raise
        fd = os.open(real, os.O_WRONLY | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def writable_problem(path: str) -> str | None:
    """Why a report could not be written at `path` (checked before a run), or None when it looks writable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return exc.strerror or str(exc)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return "is a directory"
        if stat.S_ISBLK(st.st_mode):
            return "is a block device"
        if _kernel_setting(path, st):
            return _KERNEL_SETTING
        # Written in place (a FIFO, a device), or replaced (rewritten in place when its directory is not
        # writable): either way the directory need not be writable.
        return None if os.access(path, os.W_OK) else "not writable"
    parent = os.path.dirname(os.path.realpath(path)) or "."
    if os.path.islink(path) and not os.path.isdir(parent):
        return f"a symbolic link to {os.path.realpath(path)}, whose directory does not exist"
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"cannot write there ({parent} is not a writable directory)"
    return None


_KERNEL_SETTING = "a kernel setting or status file (under /proc or /sys), which a report never is"


def _kernel_setting(p: str, st: os.stat_result) -> bool:
    """A file of procfs or sysfs that is no descriptor's link (/proc/sys/kernel/hostname, /sys/…/enabled,
    /proc/sysrq-trigger): root may write it, and a report written there sets the kernel with its text. /dev/stdout
    and /proc/self/fd/N lead to a terminal, a pipe or a file elsewhere, and are written to as ever."""
    real = os.path.realpath(p)
    return real.startswith("/sys/") or real.startswith("/proc/") and stat.S_ISREG(st.st_mode)


def _kernel_path(p: str) -> bool:
    return any(x.startswith(_IN_PLACE_ROOTS) for x in (os.path.abspath(p) + "/", os.path.realpath(p) + "/"))


# The temporary files being written, each to be renamed over its report: a process that ends at once mid-write (a
# second Ctrl-C, harness/cli.py) deletes them first (discard_unfinished), or one would stay beside the report.
_UNFINISHED: set[str] = set()


def discard_unfinished() -> None:
    """Delete the temporary files of the reports being written (for a process about to end with os._exit)."""
    for tmp in list(_UNFINISHED):
        with suppress(OSError):
            os.unlink(tmp)


def _replace(real: str, data: bytes, st: os.stat_result | None) -> None:
    directory = os.path.dirname(real) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", suffix=".tmp", dir=directory)
    _UNFINISHED.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600: keep the replaced file's mode, or give a new one what open() would have.
        os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
        os.replace(tmp, real)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        _UNFINISHED.discard(tmp)


def _write_in_place(p: str, data: bytes, mode: int, stall_timeout: float) -> None:
    fifo = stat.S_ISFIFO(mode)
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
    if stat.S_ISREG(mode):
        flags |= os.O_APPEND  # /dev/stdout redirected to a file: add to it, never overwrite what is there
    else:
        flags |= os.O_NONBLOCK  # never block forever on a FIFO nobody reads or a stuck terminal
    deadline = time.monotonic() + stall_timeout
    while True:
        try:
            fd = os.open(p, flags)  # no O_CREAT, no O_TRUNC: the node stays what it is
            break
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.EACCES, errno.EPERM) and (own := _own_descriptor(p)) is not None:
                # This process's own descriptor (`-`, /dev/stdout) that the kernel will not open again by its name: a
                # socket (a supervisor's, a parent's socketpair: ENXIO), or a pipe or file of another user (`sudo -u`,
                # a container's user given the runtime's pipe: EACCES). It is written on as it is.
                _write_descriptor(own, p, data, stall_timeout)
                return
            # A FIFO with no reader yet: opening it for writing fails with ENXIO until one opens it. There is no
            # call that waits for a reader with a timeout, so try again until the deadline.
            if not (fifo and exc.errno == errno.ENXIO) or time.monotonic() >= deadline:
                if fifo and exc.errno == errno.ENXIO:
                    raise OSError(errno.ENXIO, f"no reader opened the FIFO within {stall_timeout:g}s", p) from None
                raise
            time.sleep(0.05)
    try:
        view = memoryview(data)
        deadline = time.monotonic() + stall_timeout
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT, f"the reader took nothing for {stall_timeout:g}s", p) from None
                select.select([], [fd], [], left)
                continue
            view = view[n:]
            deadline = time.monotonic() + stall_timeout  # the deadline is for no progress, not for the whole write
    finally:
        os.close(fd)


# (Text, compiled by re where it is used: only an open that failed reads it.)
_OWN_DESCRIPTOR = r"/dev/std(?P<std>out|err)|/dev/fd/(?P<fd>\d+)|/proc/(?:self|thread-self)/fd/(?P<pfd>\d+)"


def _own_descriptor(p: str) -> int | None:
    """The descriptor of this process that a kernel name stands for (/dev/stdout → 1), or None."""
    if (m := re.fullmatch(_OWN_DESCRIPTOR, p)) is None:
        return None
    if m["std"]:
        return 1 if m["std"] == "out" else 2
    return int(m["fd"] or m["pfd"])


def _write_descriptor(fd: int, p: str, data: bytes, stall_timeout: float) -> None:
    """`data` written on this process's descriptor `fd` itself (shared with whoever handed it over: its blocking mode
    is left as it is), a reader that takes nothing for `stall_timeout` given up. A socket is sent to without waiting
    (MSG_DONTWAIT); a pipe or terminal is written PIPE_BUF bytes at a time once select says it takes them (so a write
    never blocks on a reader that stopped); a file is written to."""
    mode = os.fstat(fd).st_mode
    sock = socket.socket(fileno=os.dup(fd)) if stat.S_ISSOCK(mode) else None
    regular = stat.S_ISREG(mode)
    try:
        view = memoryview(data)
        deadline = time.monotonic() + stall_timeout
        while view:
            left = deadline - time.monotonic()
            try:
                if sock is not None:
                    n = sock.send(view, socket.MSG_DONTWAIT)
                elif regular:
                    n = os.write(fd, view)
                elif select.select([], [fd], [], max(left, 0))[1]:
                    n = os.write(fd, view[:select.PIPE_BUF])
                else:
                    raise BlockingIOError
            except BlockingIOError:
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT, f"the reader took nothing for {stall_timeout:g}s", p) from None
                if sock is not None:
                    select.select([], [sock], [], left)
                continue
            view = view[n:]
            deadline = time.monotonic() + stall_timeout
    finally:
        if sock is not None:
            sock.close()


def _umask() -> int:
    # os.umask can only be read by setting it, which races with other threads; Linux shows it in /proc.
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
