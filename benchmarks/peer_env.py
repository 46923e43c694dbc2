#!/usr/bin/env python3
"""Side virtual environments holding a *peer* (LeRobot) next to our packages.

LeRobot is what our benchmarks and parity tests compare against.  It needs Python 3.12 and must never
become a dependency of this project, so it lives in side venvs created on demand (and cached) by this
module, next to our four packages installed editable, so that one process can import both.

Standard library only: it is imported by file path from ``conftest.py`` and from benchmarks, and it
runs as a script under any Python >= 3.10::

    python benchmarks/peer_env.py lerobot-0.6.1     # create if needed, print the venv's python
    python benchmarks/peer_env.py --all             # every peer
    python benchmarks/peer_env.py --list            # names, state and paths
    python benchmarks/peer_env.py --force NAME      # wipe and recreate

Location: ``<repo>/.venvs/<name>`` (gitignored), or ``$VLA_PEER_VENVS/<name>``.  A venv counts as
ready only once ``<venv>/.complete`` holds its spec: an interrupted creation is redone, and a change
of pins (or of the Python request, or of the repo location) recreates it.  Edits to our packages'
``pyproject.toml`` (new dependencies, entry points) only re-run the install into the existing venv.
Creation of one venv is serialised across processes (pytest workers) with an ``fcntl`` file lock.

Python 3.12 is found via ``$VLA_PEER_PYTHON`` (an interpreter path), else pyenv's versions, else
``python3.12`` on PATH, else uv's own discovery.  ``uv`` is found on PATH or as ``python -m uv``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("vla-core", "vla-backbones", "vla-heads", "vla-train")
MARKER = ".complete"
ENV_VENVS = "VLA_PEER_VENVS"
ENV_PYTHON = "VLA_PEER_PYTHON"
# Thread/runtime knobs handed to peer processes unchanged (they are inherited anyway; listed for docs).
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TORCH_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """What goes into one peer venv."""

    name: str
    python: str  # version request, e.g. "3.12"
    requirements: tuple[str, ...]  # PEP 508 requirements, resolved together with our packages
    checks: tuple[str, ...]  # modules that must import after install (smoke test)
    description: str = ""

    def fingerprint(self) -> dict:
        """Everything that, when changed, requires wiping and recreating the venv."""
        return {
            "name": self.name,
            "python": self.python,
            "requirements": list(self.requirements),
            "editable": [str(REPO_ROOT / "packages" / p) for p in OUR_PACKAGES],
            "format": 2,  # 2: installs with --compile-bytecode
        }


_OURS_CHECKS = ("vla_core", "vla_backbones", "vla_heads", "vla_train")

PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec(
            name="lerobot-0.6.1",
            python="3.12",
            # Extras from lerobot 0.6.1's METADATA: ACT needs none; `diffusion` -> diffusers>=0.38,<0.40;
            # `pi` (pi0/pi05) -> transformers>=5.4,<5.6 + scipy; `dataset` -> datasets, pandas, pyarrow,
            # av, torchcodec (for LeRobotDataset in data_vs_lerobot.py).  No flash-attn anywhere here.
            requirements=("lerobot[dataset,diffusion,pi]==0.6.1",),
            checks=(
                "lerobot",
                "lerobot.policies.act.modeling_act",
                "lerobot.policies.diffusion.modeling_diffusion",
                "lerobot.policies.pi0.modeling_pi0",
                "lerobot.processor.normalize_processor",
                *_OURS_CHECKS,
            ),
            description="ACT, diffusion, pi0 and datasets (act/diffusion/pi0/data benchmarks)",
        ),
        PeerSpec(
            name="lerobot-0.5.1",
            python="3.12",
            # lerobot 0.5.1's `groot` extra pulls flash-attn (CUDA build, no CPU wheel), so its other
            # requirements are listed by hand: transformers-dep (==5.3.0), peft (peft>=0.18,<1),
            # dm-tree, timm, safetensors, Pillow, decord.  ninja only served flash-attn's build.
            # diffusers (for the GR00T DiT action head) is a core dependency of 0.5.1 (<0.36).
            requirements=(
                "lerobot==0.5.1",
                "transformers==5.3.0",
                "peft>=0.18.0,<1.0.0",
                "dm-tree>=0.1.8,<1.0.0",
                "timm>=1.0.0,<1.1.0",
                "safetensors>=0.4.3,<1.0.0",
                "Pillow>=10.0.0,<13.0.0",
                "decord>=0.6.0,<1.0.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
            ),
            checks=(
                "lerobot",
                "lerobot.policies.groot.action_head.flow_matching_action_head",
                "lerobot.policies.groot.action_head.cross_attention_dit",
                "lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl",
                "lerobot.policies.groot.groot_n1",
                *_OURS_CHECKS,
            ),
            description="GR00T N1.5 (groot_head_vs_lerobot.py), transformers 5.3.0, no flash-attn",
        ),
    )
}


# ----------------------------------------------------------------------------------------- locations


def venvs_root() -> Path:
    env = os.environ.get(ENV_VENVS)
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".venvs"


def venv_dir(name: str) -> Path:
    return venvs_root() / _spec(name).name


def venv_python(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


def log_path(name: str) -> Path:
    return venvs_root() / f"{name}.log"


def _spec(name: str) -> PeerSpec:
    try:
        return PEERS[name]
    except KeyError:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None


def _ours_fingerprint() -> str:
    """Hash of our packages' pyproject.toml files: dependency/entry-point edits need a re-install."""
    h = hashlib.sha256()
    for pkg in OUR_PACKAGES:
        pp = REPO_ROOT / "packages" / pkg / "pyproject.toml"
        h.update(pkg.encode())
        h.update(pp.read_bytes() if pp.exists() else b"<missing>")
    return h.hexdigest()[:16]


def _read_marker(name: str) -> dict | None:
    try:
        return json.loads((venv_dir(name) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def state(name: str) -> str:
    """'ready', 'stale-ours' (re-install ours), 'stale' (recreate), 'incomplete' or 'missing'."""
    d = venv_dir(name)
    if not d.exists():
        return "missing"
    marker = _read_marker(name)
    if marker is None or not venv_python(name).exists():
        return "incomplete"
    if marker.get("spec") != _spec(name).fingerprint():
        return "stale"
    if marker.get("ours") != _ours_fingerprint():
        return "stale-ours"
    return "ready"


# ---------------------------------------------------------------------------------------- discovery


def _find_uv() -> list[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv]
    probe = subprocess.run(
        [sys.executable, "-m", "uv", "--version"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    raise RuntimeError("`uv` not found (neither on PATH nor as `python -m uv`); install it: pip install uv")


def _python_version(exe: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(request: str) -> str:
    """An interpreter path for version ``request`` ("3.12"), or the request itself for uv to find."""
    env = os.environ.get(ENV_PYTHON)
    if env:
        if _python_version(env) != request:
            raise RuntimeError(f"${ENV_PYTHON}={env} is not a working Python {request}")
        return env
    candidates: list[str] = []
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", f"{request}.*", "bin", "python")), reverse=True
    )
    exe = shutil.which(f"python{request}")
    if exe and "shims" not in exe:  # a pyenv shim only works when that version is selected
        candidates.append(exe)
    for c in candidates:
        if _python_version(c) == request:
            return c
    return request  # let uv look for (or fetch) a managed interpreter


# ----------------------------------------------------------------------------------------- creation


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    root = venvs_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"[peer_env] {name}: another process is creating it; waiting for the lock ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_logged(cmd: Sequence[str], log, verbose: bool, env: dict | None = None) -> int:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO_ROOT), env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if verbose:
            sys.stderr.write(line)
    log.flush()
    return proc.wait()


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def _uv_env() -> dict:
    env = dict(os.environ)
    # Do not let an activated venv (e.g. under `uv run`) or project settings leak into side installs.
    for k in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX"):
        env.pop(k, None)
    env.setdefault("UV_HTTP_TIMEOUT", "300")
    return env


def _create(name: str, *, recreate: bool, verbose: bool) -> None:
    spec = _spec(name)
    d, py, log_file = venv_dir(name), venv_python(name), log_path(name)
    uv = _find_uv()
    env = _uv_env()
    ours = _ours_fingerprint()  # taken before installing: a concurrent edit then reads as stale next time
    editable: list[str] = []
    for pkg in OUR_PACKAGES:
        editable += ["-e", str(REPO_ROOT / "packages" / pkg)]
    t0 = time.monotonic()
    with open(log_file, "w") as log:
        (d / MARKER).unlink(missing_ok=True)
        if recreate:
            shutil.rmtree(d, ignore_errors=True)
            interp = find_python(spec.python)
            _say(f"[peer_env] creating {name} at {d} with Python {spec.python} ({interp}); log: {log_file}")
            rc = _run_logged([*uv, "venv", "--seed", "--python", interp, str(d)], log, verbose, env)
            if rc != 0:
                raise RuntimeError(
                    f"peer {name}: `uv venv` failed (rc={rc}); log {log_file}; tail:\n{_tail(log_file)}"
                )
        else:
            _say(f"[peer_env] {name}: our packages' pyproject.toml changed; re-installing; log: {log_file}")
        # Precompiled .pyc matter: PYTHONDONTWRITEBYTECODE=1 would otherwise recompile torch and
        # transformers on every peer start (tens of seconds).
        cmd = [
            *uv,
            "pip",
            "install",
            "--compile-bytecode",
            "--python",
            str(py),
            *spec.requirements,
            *editable,
        ]
        if not recreate:
            for pkg in OUR_PACKAGES:
                cmd += ["--reinstall-package", pkg]
        rc = _run_logged(cmd, log, verbose, env)
        if rc != 0:
            raise RuntimeError(
                f"peer {name}: `uv pip install` failed (rc={rc}); log {log_file}; tail:\n{_tail(log_file)}"
            )
        check = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
        rc = _run_logged([str(py), "-c", check, *spec.checks], log, verbose, _peer_env(name))
        if rc != 0:
            raise RuntimeError(
                f"peer {name}: installed, but the import check failed ({', '.join(spec.checks)}); "
                f"log {log_file}; tail:\n{_tail(log_file)}"
            )
        log.write(f"\n[peer_env] done in {time.monotonic() - t0:.1f}s\n")
    marker = {
        "spec": spec.fingerprint(),
        "ours": ours,
        "created": time.time(),
        "seconds": round(time.monotonic() - t0, 1),
    }
    tmp = d / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, d / MARKER)
    _say(f"[peer_env] {name} ready in {time.monotonic() - t0:.1f}s")


def ensure_peer(name: str, *, force: bool = False, verbose: bool = False) -> Path:
    """Return the python executable of peer venv ``name``, creating or refreshing it first if needed.

    Raises ``KeyError`` for an unknown name and ``RuntimeError`` (with the install log's tail) when
    creation fails.  Safe to call concurrently from several processes.
    """
    _spec(name)
    if not force and state(name) == "ready":
        return venv_python(name)
    with _locked(name):
        st = state(name)  # another process may have finished it while we waited
        if force or st != "ready":
            _create(name, recreate=force or st != "stale-ours", verbose=verbose)
    return venv_python(name)


# -------------------------------------------------------------------------------------------- running


def _peer_env(name: str, extra: dict | None = None) -> dict:
    env = dict(os.environ)  # OMP_NUM_THREADS & co. (THREAD_ENV_VARS) pass through unchanged
    for k in ("VIRTUAL_ENV", "PYTHONHOME", "CONDA_PREFIX"):
        env.pop(k, None)
    env["VIRTUAL_ENV"] = str(venv_dir(name))
    env["PATH"] = str(venv_dir(name) / "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def run_in_peer(
    name: str,
    script_path: str | os.PathLike,
    *args: str,
    timeout: float | None = 1800,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``python script_path *args`` in peer venv ``name`` (created if needed); capture output.

    The environment is inherited (so ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``
    ... pass through), plus ``env`` overrides.  With ``check`` (default) a non-zero exit or a timeout
    raises ``RuntimeError`` carrying the tails of stdout and stderr.
    """
    py = ensure_peer(name)
    cmd = [str(py), str(script_path), *map(str, args)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=str(cwd or REPO_ROOT),
            env=_peer_env(name, env),
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise RuntimeError(
            f"peer {name}: {' '.join(cmd)} timed out after {timeout}s\n"
            f"--- stdout (tail) ---\n{_tail_str(out)}\n"
            f"--- stderr (tail) ---\n{_tail_str(err)}"
        ) from None
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"peer {name}: {' '.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout (tail) ---\n{_tail_str(proc.stdout)}\n"
            f"--- stderr (tail) ---\n{_tail_str(proc.stderr)}"
        )
    return proc


def _tail_str(s: str, n: int = 40) -> str:
    return "\n".join((s or "").splitlines()[-n:])


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("names", nargs="*", help=f"peer venvs to ensure: {', '.join(PEERS)}")
    ap.add_argument("--all", action="store_true", help="ensure every peer venv")
    ap.add_argument("--list", action="store_true", help="list peers, their state and location")
    ap.add_argument("--force", action="store_true", help="wipe and recreate even if ready")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not stream the install log")
    a = ap.parse_args(argv)
    if a.list:
        for n, s in PEERS.items():
            print(f"{n:16s} {state(n):11s} {venv_python(n)}  # {s.description}")
        return 0
    names = list(PEERS) if a.all else a.names
    if not names:
        ap.error("name a peer, or use --all / --list")
    status = 0
    for n in names:
        try:
            print(ensure_peer(n, force=a.force, verbose=not a.quiet))
        except (KeyError, RuntimeError) as e:
            print(f"[peer_env] {n}: FAILED: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
