"""One trainer per run directory: an OS file lock on ``run_dir/run.lock``, held by rank 0.

``fcntl.flock`` is tied to the open file, so the OS releases it when the process ends, however it
ends (exit, exception, SIGKILL): there is no stale lock to clean up. The file holds who took it
(pid, host, start time, command line) for the error a second trainer gets.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO

LOCK_FILE = "run.lock"


class RunDirectoryInUseError(RuntimeError):
    """Another process holds the run directory's lock (names it: pid, host, start time)."""


class RunLock:
    """An exclusive, non-blocking lock on ``run_dir/run.lock``; ``release()`` (or process exit) frees it."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirectoryInUseError` at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open: the lock lives as long as the file
        # ("a+": no truncation before the lock is ours)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise RunDirectoryInUseError(
                f"output_dir {self.path.parent} is in use by another trainer ({holder}; lock file {self.path}): "
                "wait for it to finish, stop it, or choose another output_dir (--set output_dir=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }) + "\n")
        handle.flush()
        self._file = handle
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the flock
            self._file = None


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"
