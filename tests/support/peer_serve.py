"""A long-lived peer process (a script in a LeRobot side venv) that writes one case per request.

Importing LeRobot takes tens of seconds, so an option sweep shares one peer process: the test sends
each case as one JSON line on the script's stdin (``{"name": ..., **case}``) and the script answers
with one JSON line on stdout per case (``{"name", "ok", "error", "traceback", ...}``), writing the
case's files under ``OUT_ROOT/<name>/``. Cases may be queued ahead (:meth:`PeerServer.submit`), so
the peer writes the next case while the test checks the current one.

Used by ``tests/interop/test_*_lerobot*.py``; the scripts live in ``tests/peer_scripts/`` and take
``OUT_ROOT --serve`` (plus ``extra_args``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class PeerServer:
    """The serving peer script: cases go in as JSON lines, one reply line per case comes back.

    ``cases``: the named cases :meth:`result` may send on its own (a sweep table); ``omit``: case
    fields that stay on the test's side (e.g. the error a refusal test expects).
    """

    def __init__(self, python: Path, script: Path, root: Path, *, cases: Mapping[str, Mapping[str, Any]] = (),
                 omit: Sequence[str] = ("refused",), extra_args: Sequence[str] = ()) -> None:
        self.root, self.cases, self.omit = root, dict(cases), tuple(omit)
        self.replies: dict[str, dict[str, Any]] = {}
        self.submitted: set[str] = set()
        self.log_path = root / "peer.log"
        self.log = self.log_path.open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([str(python), str(script), str(root), "--serve", *extra_args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def submit(self, name: str, case: Mapping[str, Any]) -> None:
        """Queue ``case`` under ``name`` (the peer works through its queue in order)."""
        spec = {k: v for k, v in case.items() if k not in self.omit}
        self.proc.stdin.write(json.dumps({"name": name, **spec}) + "\n")
        self.proc.stdin.flush()
        self.submitted.add(name)

    def reply(self, name: str) -> dict[str, Any]:
        """The peer's reply for ``name`` (a case of ``cases`` not yet sent is sent now); fails the test,
        with the peer's log, if the peer exits or reports an error."""
        if name not in self.submitted:
            self.submit(name, self.cases[name])
        while name not in self.replies:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                raise AssertionError(f"peer exited ({self.proc.poll()}):\n{self.log_path.read_text()[-3000:]}")
            reply = json.loads(line)
            self.replies[reply["name"]] = reply
        reply = self.replies[name]
        assert reply["ok"], f"peer failed on {name}: {reply.get('error')}\n{reply.get('traceback', '')}"
        return reply

    def result(self, name: str) -> Path:
        """``OUT_ROOT/<name>`` once the peer wrote it."""
        self.reply(name)
        return self.root / name

    def close(self) -> None:
        self.proc.stdin.close()
        if self.submitted - set(self.replies):  # cases nobody asked for (a -k selection): stop now
            self.proc.kill()
        self.proc.wait(timeout=120)
        self.log.close()
