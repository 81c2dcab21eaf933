"""Machine-dependent choices: the thread count, native bf16, and what `auto` means for precision and compile.

- Threads: `SYNTHFM_THREADS` if set, else `OMP_NUM_THREADS` if set, else the physical cores this process may run
  on. Set once per process (`set_threads`); hyper-threads and oversubscribed shared cores slow matmuls down.
- Native bf16: a CUDA GPU of compute capability >= 8.0 (Ampere and later), or a CPU reporting `avx512_bf16` or
  `amx_bf16` (x86) or `bf16` (Arm). Without it, bf16 autocast is emulated and much slower than fp32 (measured
  17x on an AVX2-only AMD EPYC); `bf16_slowdown` measures it with a short matmul probe.
- `mixed_precision: auto` is bf16 where native, else fp32 (`no`). `synthfm plan --device h100|a100` resolves it
  for the planned GPU instead of this machine (`assume_native_bf16`).
- `compile: auto` follows a rule, not a probe (a probe would pay the compile time it is meant to save):
  compile on a CUDA device with Triton when the run has at least `COMPILE_MIN_STEPS` optimiser steps; stay eager
  on CPUs. On the 2-core AMD EPYC development machine the MAE recipe's ViT-Ti step (8 x 512 decoder, 64 px,
  1 thread, quiet machine) ran at 1.087x a plain eager loop compiled and 1.061x eager uncompiled
  (benchmarks/bench_mae.py --compile true): the step is matmul-bound (the eager loop already reaches 0.76 of
  the fp32 matmul peak), so fusion has 2-3% to win, less than a short run spends compiling.
  `compile: true` still compiles anywhere inductor runs (a C++ compiler on CPU).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import torch

from synthfm.errors import SynthfmError

THREADS_ENV = "SYNTHFM_THREADS"
COMPILE_MIN_STEPS = 2000
_threads_set: int | None = None


def physical_cores() -> int:
    """Physical cores available to this process (logical CPUs of the affinity mask when that is smaller)."""
    try:
        import psutil  # an Accelerate dependency

        cores = psutil.cpu_count(logical=False) or 0
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        cores = 0
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores or logical, logical))


def _env_threads(name: str) -> int | None:
    """A positive thread count from environment variable `name`, None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise SynthfmError(f"{name}={raw!r} is not a positive whole number of threads",
                           f"set {name} to e.g. 1 or 2, or unset it to use the physical cores")
    return int(raw)


def thread_count() -> int:
    """Threads for torch: SYNTHFM_THREADS, else OMP_NUM_THREADS, else the physical cores."""
    return _env_threads(THREADS_ENV) or _env_threads("OMP_NUM_THREADS") or physical_cores()


def set_threads(force: bool = False) -> int:
    """Set torch's intra-op thread count once per process (again only with `force`); return it."""
    global _threads_set
    if _threads_set is None or force:
        _threads_set = thread_count()
        torch.set_num_threads(_threads_set)
    return _threads_set


def default_device() -> torch.device:
    """The device Accelerate trains on by default here."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_bf16_flags() -> list[str]:
    """The native bf16 instruction sets this CPU reports (empty: bf16 is emulated)."""
    found = set()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    found |= {k for k in ("avx512_bf16", "amx_bf16") if caps.get(k)}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(cpuinfo.read_text().split())
        found |= flags & {"avx512_bf16", "amx_bf16"}
        if platform.machine() in ("aarch64", "arm64") and "bf16" in flags:
            found.add("bf16")
    return sorted(found)


@cache
def native_bf16(device_type: str | None = None) -> bool:
    """Whether `device_type` (default: the training device) computes bf16 natively."""
    device_type = device_type or default_device().type
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device_type == "cpu":
        return bool(cpu_bf16_flags())
    return False


_ASSUMED_BF16: ContextVar[bool | None] = ContextVar("synthfm_assumed_native_bf16", default=None)


@contextmanager
def assume_native_bf16(native: bool | None) -> Iterator[None]:
    """Within: `auto` precision resolves as if the training device did (not) compute bf16 natively (None: ask
    this machine). For planning a run on another device."""
    token = _ASSUMED_BF16.set(native)
    try:
        yield
    finally:
        _ASSUMED_BF16.reset(token)


def resolve_precision(requested: str, device_type: str | None = None) -> str:
    """Accelerate's mixed_precision for a config value: `auto` is bf16 where native, else `no` (fp32)."""
    if requested != "auto":
        return requested
    assumed = _ASSUMED_BF16.get()
    return "bf16" if (native_bf16(device_type) if assumed is None else assumed) else "no"


def can_compile(device_type: str | None = None) -> bool:
    """Whether torch.compile's inductor backend can run here (Triton on CUDA, a C++ compiler on CPU)."""
    device_type = device_type or default_device().type
    if sys.platform == "win32":
        return False
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    if device_type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    return False


def resolve_compile(requested: bool | str, planned_steps: int, device_type: str | None = None) -> bool:
    """Whether to torch.compile: as requested, or for `auto` the rule in this module's docstring."""
    if requested != "auto":
        return bool(requested)
    device_type = device_type or default_device().type
    return device_type == "cuda" and planned_steps >= COMPILE_MIN_STEPS and can_compile(device_type)


def _seconds_per_matmul(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best-of-`reps` seconds of an n x n matrix product in `dtype`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bf16_slowdown(device: torch.device | None = None, n: int = 256, reps: int = 3) -> float:
    """Measured time of a bf16 matmul over an fp32 one of the same size (> 1: bf16 is slower here)."""
    device = device or default_device()
    return _seconds_per_matmul(device, torch.bfloat16, n, reps) / _seconds_per_matmul(device, torch.float32, n, reps)


def precision_warning(requested: str, device: torch.device) -> str | None:
    """A warning for an explicit bf16 on a device without native bf16, with the measured slowdown."""
    if requested != "bf16" or native_bf16(device.type):
        return None
    slow = bf16_slowdown(device)
    return (f"mixed_precision: bf16 on a {device.type} without native bf16 ({platform.processor() or 'this CPU'} "
            f"reports none of avx512_bf16/amx_bf16): a bf16 matmul measured {slow:.1f}x the time of fp32 here; "
            "set mixed_precision: auto (fp32 on this machine) unless the recipe must run in bf16")


def checked_precision(requested: str, main_process: bool = True) -> str:
    """Accelerate's mixed_precision for a config value, with `precision_warning` raised once (main process)."""
    precision = resolve_precision(requested)
    if main_process:
        warning = precision_warning(precision, default_device())
        if warning is not None:
            warnings.warn(warning, stacklevel=3)
    return precision
