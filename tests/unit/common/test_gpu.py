"""utils_cv.common.gpu on this machine, and its branches with the platform patched."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from utils_cv.common import gpu
from utils_cv.common.gpu import (
    cpu_flags,
    cpu_has_fast_bf16,
    cpu_name,
    db_num_workers,
    torch_device,
    which_processor,
)

HAS_GPU = torch.cuda.is_available()


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU-only machine")
def test_which_processor_on_cpu_machine():
    described = which_processor()
    assert described.startswith("CPU: ")
    assert f"({os.cpu_count()} cores)" in described
    assert cpu_name() in described


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU-only machine")
def test_torch_device_on_cpu_machine():
    assert torch_device() == torch.device("cpu")
    assert torch.zeros(1, device=torch_device()).device.type == "cpu"


@pytest.mark.gpu
def test_which_processor_and_device_on_gpu_machine():
    assert which_processor() == f"GPU: {torch.cuda.get_device_name(0)}"
    assert torch_device() == torch.device("cuda")


def test_which_processor_names_a_gpu_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test")
    assert which_processor() == "GPU: NVIDIA Test"
    assert torch_device() == torch.device("cuda")


def test_which_processor_cpu_branch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert which_processor() == f"CPU: {cpu_name()} ({os.cpu_count()} cores)"
    assert torch_device() == torch.device("cpu")


def test_cpu_name_matches_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if not names:
        pytest.skip("/proc/cpuinfo has no model name")
    assert cpu_name() == names[0]


def test_db_num_workers_explicit_value(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert db_num_workers(3) == 3
    assert db_num_workers(0) == 0


def test_db_num_workers_zero_on_windows(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    assert db_num_workers() == 0
    assert db_num_workers(4) == 0


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 0), (3, 2), (4, 3), (9, 8), (64, 8)])
def test_db_num_workers_default_by_cores(monkeypatch, cores, expected):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(gpu.os, "cpu_count", lambda: cores)
    assert db_num_workers() == expected


def test_db_num_workers_on_this_machine():
    workers = db_num_workers()
    if platform.system() == "Windows" or (os.cpu_count() or 1) <= 2:
        assert workers == 0
    else:
        assert 1 <= workers <= min(8, os.cpu_count() - 1)


def test_cpu_flags_match_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith("flags")]
    except OSError:
        assert cpu_flags() == set()
        return
    if not lines:
        pytest.skip("/proc/cpuinfo has no flags line")
    flags = cpu_flags()
    assert flags == set(lines[0].split(":", 1)[1].split())
    assert isinstance(flags, set) and all(isinstance(f, str) and f for f in flags)
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"sse2", "fpu"} <= flags


def test_cpu_has_fast_bf16_needs_the_instructions_and_onednn():
    expected = torch.backends.mkldnn.is_available() and bool(
        cpu_flags() & {"avx512_bf16", "amx_bf16"}
    )
    assert cpu_has_fast_bf16() is expected


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU without bf16 instructions")
def test_bf16_matmul_runs_on_this_cpu():
    a = torch.randn(64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a @ a
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), a @ a, atol=1.0, rtol=0.05)
