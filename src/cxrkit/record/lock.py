"""An advisory per-run lock, so two processes never update one run folder at the same time.

`cxrkit evaluate`, `calibrate`, `stress`, `referral` and `export` read files of the run (meta.json, metrics.json,
predictions.csv), add their part and write them back; two of them at once each write back what they read, and the
second one silently drops the first one's results. Each such command holds the lock from loading the run to its
last write; `cxrkit adapt --out RUN2` holds RUN2's while it replaces that folder's files. The lock is ``flock`` on a
file in the run folder: the kernel releases it when the holder dies (kill -9 included), so a crash never leaves a
stale lock to clean up by hand.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxrkit.record.files import RunRecordError, remove_stale_leftovers, roll_back_interrupted_updates

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not locked (as before), the rest of cxrkit works unchanged
    fcntl = None

LOCK_FILE = ".cxrkit.lock"
# A writer that finds the run busy says so after this long (shorter waits are the common case and stay quiet).
NOTICE_AFTER_S = 2.0
# Runs this thread holds, and how deep: a nested update (train finishing with the threshold and report) must not flock
# again, which would wait for itself. Per thread: another thread's flock, on its own descriptor, does wait, as it should.
_local = threading.local()


class RunBusyError(RunRecordError):
    """Another live process holds the run's lock and this one should not wait for it; the message names it."""


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it into the lock file ("another process" when not (yet) written)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"process {info['pid']} on {info['host']} (cxrkit {info['command']}, since {info['since']})"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


def _busy(fd: int) -> str | None:
    """The holder's command when the lock is held by another process, else None (and then this process holds it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"null")["command"]
        except (OSError, ValueError, TypeError, KeyError):
            return ""


@contextmanager
def run_lock(run_dir: Path | str, command: str, wait: bool = True, create: bool = False, read_only: bool = False) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body; ``command`` (``evaluate``, ``train``...) is what another process is told.

    A short update (evaluate, calibrate, ...) that finds the run busy waits, and says so after a moment: both results
    are wanted, and the other update ends on its own in seconds to minutes. It does not wait for a training, which can
    last hours and replaces the run's files: that, and ``wait=False`` (training itself: starting over a run that another
    process is writing would mix two runs), is a one-line :class:`RunBusyError` naming the other process.
    ``create`` makes the folder (training); otherwise a missing folder is left to the caller's own error.
    ``read_only``: the caller only reads the run (the source of ``cxrkit adapt``), so a folder where no lock file can
    be made (a read-only mount, another user's folder) is read unlocked instead of refused.
    """
    if not isinstance(run_dir, (str, os.PathLike)):  # not a path at all: the caller's own check says so in one line
        yield
        return
    run_dir = Path(run_dir)
    if create and not run_dir.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    held: dict[str, int] = _local.__dict__.setdefault("held", {})
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    if fcntl is None or not run_dir.is_dir():
        yield
        return
    fd = _open_lock_file(run_dir / LOCK_FILE, run_dir, command, read_only)
    if fd is None:
        yield
        return
    try:
        other = _busy(fd)
        if other is not None and (not wait or other == "train"):
            raise _busy_error(run_dir, command, fd, other)
        waited, told = time.monotonic(), False
        while other is not None:
            if not told and time.monotonic() - waited >= NOTICE_AFTER_S:
                print(f"waiting for {_holder(fd)} to finish updating {run_dir}...", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.1)
            other = _busy(fd)
            if other == "train":  # a training started while we waited: its files are not ours to add to
                raise _busy_error(run_dir, command, fd, other)
        _write_holder(fd, command)
        held[key] = 1
        try:
            # Rollback copies and temporary files of a writer killed half-way (kill -9) would stay for good. With the
            # lock held no other update is writing; those of a live process are kept all the same.
            for pid in roll_back_interrupted_updates(run_dir):
                print(f"note: an update of {run_dir} by process {pid} was cut off before it ended; its files were put back "
                      "as they were before it", file=sys.stderr, flush=True)
            remove_stale_leftovers(run_dir)
            yield
        finally:
            del held[key]
            _write_holder(fd, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock_file(path: Path, run_dir: Path, command: str, read_only: bool) -> int | None:
    """A descriptor on the run's lock file; None when a reader (``read_only``) finds none and cannot make one."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        code = errno.EACCES
        if path.is_file():
            return os.open(path, os.O_RDONLY)  # another user's lock file: flock works on a read-only descriptor too
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT):
            raise
        code = exc.errno
        if read_only and path.is_file():
            return os.open(path, os.O_RDONLY)
    if read_only:  # no lock file and none can be made here: read unlocked, as predict and serve read every run
        return None
    raise _not_writable(run_dir, command, code)


def _write_holder(fd: int, command: str | None) -> None:
    """Say who holds the lock (None: nobody) in the lock file; best effort (the file may be another user's, read-only)."""
    try:
        os.ftruncate(fd, 0)
        if command is not None:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass


def _busy_error(run_dir: Path, command: str, fd: int, other: str) -> RunBusyError:
    """The one-line refusal, naming the process that holds the run."""
    doing = "training into" if other == "train" else "updating"
    advice = "choose another --out, or wait until it has finished" if command == "train" else f"run `cxrkit {command}` when it has finished"
    return RunBusyError(f"{run_dir} is in use: {_holder(fd)} is {doing} it; {advice}")


def _not_writable(run_dir: Path, command: str, code: int) -> RunRecordError:
    """The one-line error for a run folder this process cannot write into."""
    return RunRecordError(f"{run_dir} cannot be written ({os.strerror(code)}); `cxrkit {command}` stores its results in the run folder: "
                          "make it writable or work on a copy")
