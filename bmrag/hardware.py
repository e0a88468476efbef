"""Which dtype runs fastest here: bf16 only where the hardware multiplies bf16 matrices itself.

On CPUs with AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) bf16
matmuls are several times faster than fp32 (measured 2.57 vs 0.40 TFLOP/s on 2 threads of a Xeon with
AMX). Without them PyTorch emulates bf16 and it is far slower than fp32: 0.7-1.5 vs 65 GFLOP/s on 2
threads of an AVX2-only AMD EPYC (Zen 1), so a bf16 default there makes everything ~50x slower. The
defaults of the encoder, the local generator and training therefore come from
:func:`bmrag.loading.default_dtype` (which reads :func:`cpu_has_bf16_matmul`),
and every component reports the dtype it chose (``describe()``, logs, result files).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""``/proc/cpuinfo`` flags that mean native bf16 matrix instructions."""


@functools.cache
def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (Linux); None where there is none."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (Linux); empty where that file does not exist."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16).

    Only Linux is inspected; elsewhere this answers False, so the default stays fp32 (always correct, and
    never the emulated slow path).
    """
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def usable_core_ids() -> list[int]:
    """The ids of the CPU cores this process may run on (its affinity mask, else ``0 .. os.cpu_count() - 1``)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """CPU cores this process may run on (how many :func:`usable_core_ids` lists)."""
    return len(usable_core_ids()) or 1


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """torch CPU threads to use when none is given: the cores other processes are not already using, at least 1.

    More threads than free cores oversubscribes the CPU: on a 2-core machine kept busy by another process, an
    answer with torch's default of 2 threads took 2 min 14 s against 22 s with 1 thread (issue 13); the
    threads then wait for each other at every barrier. The 1-minute load average stands for the busy cores.

    Args:
        cores: Usable cores (default :func:`usable_cores`).
        load: Busy cores (default: the 1-minute load average, 0 where the OS has none).
    """
    cores = usable_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, min(cores, cores - round(load)))


def load_average() -> float:
    """The 1-minute load average (busy cores), 0 where the OS has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def describe_cpu() -> str:
    """One line naming the CPU and its matmul-relevant flags, for benchmark and result files."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    flags = [flag for flag in wanted if flag in cpu_flags()]
    return f"{name} ({', '.join(flags) or 'no AVX2/AVX512 flags'})"
