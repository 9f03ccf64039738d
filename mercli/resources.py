"""How much of this machine a run may use: CPUs, memory, and from them the number of extract workers.

A batch job (SLURM, ``taskset``, a container with a CPU limit) is usually given a few CPUs of a big
node; ``os.cpu_count()`` reports the whole node, so thread and worker counts are sized by the CPUs
this process may actually run on.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

#: Memory set aside per extract worker with the default encoders: its largest measured resident
#: size is about 1.1 GiB (``benchmarks/extract.py``), plus room for longer clips.
WORKER_MEMORY_BYTES = 3 * 2**29  # 1.5 GiB


def usable_cpus() -> int:
    """The CPUs this process may run on (its allocation, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


#: CPU flags (Linux ``/proc/cpuinfo``) of instructions that multiply bfloat16 natively: x86's
#: AVX-512 BF16 and AMX, Arm's BF16 extension.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 natively: there its matrix products run 3.5-4x as fast
    as float32's (measured on an AMD EPYC with AVX-512 BF16); elsewhere they are emulated, slower
    than float32. ``False`` where the flags cannot be read (not Linux)."""
    try:
        lines = cpuinfo.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(NATIVE_BFLOAT16_FLAGS & set(value.split()))
    return False


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes that can be allocated without swapping (Linux ``MemAvailable``); ``None`` elsewhere."""
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_workers(clips: int, cpus: int | None = None, memory: int | None = None) -> int:
    """Workers for ``extract.workers = 0``: one per usable CPU, but never more than there are clips
    to extract or than the available memory holds (at least one)."""
    cpus = usable_cpus() if cpus is None else cpus
    memory = available_memory() if memory is None else memory
    by_memory = cpus if memory is None else memory // WORKER_MEMORY_BYTES
    return max(1, min(cpus, clips, by_memory))


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` processes, so that together they fill the CPUs."""
    return max(1, usable_cpus() // workers)


#: glibc's ``mallopt`` parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Have the C library keep the memory this process frees for its next allocations, rather than
    hand it back to the system: a training step frees and allocates the same megabytes of tensors
    again, and each page handed back is faulted in afresh (measured on the development machine, a
    virtual machine: 160-290 page faults and 0.3-0.8 ms of a 15 ms step; a 5-fold training 6 %
    faster). The process keeps its peak memory until it ends. Returns whether it applied (glibc
    only: elsewhere nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library loaded as the process (Windows), no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**30))
