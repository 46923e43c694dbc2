"""Compiled inference: ``torch.compile`` of a policy's ``sample_chunk``, CUDA graphs, bf16 weights.

:meth:`vla_core.Policy.compile` builds a :class:`CompiledSampler` and ``predict_action_chunk`` calls it
in place of the eager ``sample_chunk`` (B, H, A). What is compiled is everything between the normalized
batch and the normalized chunk: the backbone (the prefix / context, computed once per chunk), the
projector and the head's whole sampling loop. Validation and (un)normalization stay eager (a few
elementwise ops; the value checks need a host sync anyway).

- **Static shapes** (``dynamic=False``): each new batch size (or image size) compiles once; calls with
  shapes seen before never recompile. After torch's recompile limit (8 by default) a further shape runs
  eager, with torch's warning.
- **CUDA graphs** (``mode="reduce-overhead"``, or ``"max-autotune"``): inductor captures each compiled
  graph in a CUDA graph (``torch.compiler.cudagraph_mark_step_begin`` is called before every chunk and
  the chunk is copied out of the graph's buffer). They need the policy on a CUDA device: elsewhere the
  mode falls back to the same mode without graphs, with a ``UserWarning`` saying so. Graph pieces that
  cannot be captured (a CPU tensor, a data-dependent branch) run without a graph; inductor names them
  under ``TORCH_LOGS=cudagraphs``.
- **bf16** (``dtype=torch.bfloat16``): the weights are cast in place (the normalization statistics stay
  float32), the compiled path runs under ``torch.autocast`` of that dtype (so a float32 intermediate,
  e.g. a sinusoidal time embedding, meets a bf16 layer safely), and the chunk is unnormalized in
  float32.

Graph breaks that remain (the compiled path still runs, in several graphs): tokenizing ``task``
strings, diffusers' scheduler ``step`` (DDPM draws its per-step noise from a ``torch.Generator``),
and any noise drawn from a ``generator`` when no ``noise`` is given.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vla_core.errors import ConfigError

if TYPE_CHECKING:
    from vla_core.interfaces import Batch
    from vla_core.policy_base import Policy

# torch.compile's modes (None means "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Modes that capture CUDA graphs -> the same mode without them (used off CUDA).
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
COMPILE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class CompiledSampler:
    """A compiled ``sample_chunk``: ``(nbatch, *, noise, generator) -> (B, H, A)`` normalized chunk."""

    fn: Callable[..., Tensor]
    mode: str
    backend: str | Callable[..., Any]
    dtype: torch.dtype | None
    device_type: str
    cuda_graphs: bool

    def __call__(self, nbatch: Batch, *, noise: Tensor | None, generator: torch.Generator | None,
                 **extra: Any) -> Tensor:
        """``extra``: further ``sample_chunk`` keywords (``guide=`` for real-time chunking)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous chunk's buffers may be reused now
        autocast = (torch.autocast(self.device_type, dtype=self.dtype) if self.dtype not in (None, torch.float32)
                    else contextlib.nullcontext())
        with autocast:
            chunk = self.fn(nbatch, noise=noise, generator=generator, **extra)
        return chunk.clone() if self.cuda_graphs else chunk  # a graph's output buffer is overwritten next call


def _device(policy: Policy) -> torch.device:
    tensor = next(iter(policy.parameters()), None)
    if tensor is None:
        tensor = next(iter(policy.buffers()), torch.empty(0))
    return tensor.device


def cast_weights(policy: Policy, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer of ``policy`` to ``dtype`` in place, except the
    normalization statistics (``policy.normalizer``), which stay exactly as they are."""
    stats = {name: t.detach().clone() for name, t in policy.normalizer.state_dict().items()}
    policy.to(dtype)
    policy.normalizer.float()
    policy.normalizer.load_state_dict(stats)


def compile_sampler(
    policy: Policy,
    mode: str | None = None,
    *,
    backend: str | Callable[..., Any] = "inductor",
    dtype: torch.dtype | None = None,
    fullgraph: bool = False,
) -> CompiledSampler:
    """A :class:`CompiledSampler` of ``policy.sample_chunk`` (see the module docstring).

    Checks every argument before anything changes; ``dtype`` then casts the weights in place. Without
    ``dtype``, weights already in a lower precision (an earlier ``compile(dtype=...)``) run under its autocast.
    """
    mode = "default" if mode is None else mode
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile: mode expected one of {['default', *COMPILE_MODES[1:]]} or None, received {mode!r}")
    if dtype is not None and dtype not in COMPILE_DTYPES:
        raise ConfigError(f"compile: dtype expected one of {[str(d) for d in COMPILE_DTYPES]} or None, received {dtype!r}")
    if not (callable(backend) or backend in torch.compiler.list_backends(exclude_tags=())):
        raise ConfigError(f"compile: backend expected a callable or one of {torch.compiler.list_backends()}, "
                          f"received {backend!r}")
    if mode != "default" and backend != "inductor":
        raise ConfigError(f"compile: mode {mode!r} applies to the 'inductor' backend only, received backend {backend!r}")
    device = _device(policy)
    cuda_graphs = mode in CUDA_GRAPH_MODES
    if cuda_graphs and device.type != "cuda":
        fallback = CUDA_GRAPH_MODES[mode]
        warnings.warn(f"compile(mode={mode!r}): CUDA graphs need the policy on a CUDA device, but it is on "
                      f"{device}; compiling with mode={fallback!r} (no CUDA graphs) instead", UserWarning, stacklevel=3)
        mode, cuda_graphs = fallback, False
    if dtype is not None:
        cast_weights(policy, dtype)
    else:  # weights cast before (an earlier compile(dtype=...)) keep their dtype and its autocast
        dtypes = {p.dtype for p in policy.parameters() if p.is_floating_point()}
        dtype = dtypes.pop() if dtypes in ({torch.bfloat16}, {torch.float16}) else None
    fn = torch.compile(policy.sample_chunk, backend=backend, mode=None if mode == "default" else mode,
                       fullgraph=fullgraph, dynamic=False)
    return CompiledSampler(fn=fn, mode=mode, backend=backend, dtype=dtype, device_type=device.type,
                           cuda_graphs=cuda_graphs)


__all__ = ["COMPILE_DTYPES", "COMPILE_MODES", "CUDA_GRAPH_MODES", "CompiledSampler", "cast_weights", "compile_sampler"]
