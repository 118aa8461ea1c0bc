"""Which processor we run on, and settings that depend on it."""

from __future__ import annotations

import os
import platform

import torch


def which_processor() -> str:
    """Describe the processor torch will use, e.g. 'GPU: NVIDIA H200' or 'CPU: AMD EPYC (2 cores)'."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {cpu_name()} ({os.cpu_count()} cores)"


def cpu_name() -> str:
    """The CPU model name, from /proc/cpuinfo where available."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def db_num_workers(non_windows_num_workers: int | None = None) -> int:
    """Number of DataLoader worker processes: 0 on Windows, else ``non_windows_num_workers``.

    The default is 0 on a machine with 2 cores or fewer (workers would take cores from the
    model), else min(8, cores - 1).
    """
    if platform.system() == "Windows":
        return 0
    if non_windows_num_workers is not None:
        return non_windows_num_workers
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512_BF16 or AMX-BF16) that oneDNN uses.

    Without them bf16 is converted in software and not expected to be faster than fp32.
    """
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
