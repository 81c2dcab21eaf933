"""Tests of the machine-dependent choices: thread count, `auto` precision and compile, the bf16 warning."""

from __future__ import annotations

import pytest
import torch

from synthfm import hardware
from synthfm.errors import SynthfmError
from synthfm.pretrain.config import pretrain_config
from synthfm.runs import config_hash

DEMO_HASH = "4fc4ac4c490708a4"  # mae_vit_tiny_demo's hash before `auto` existed (mixed_precision: "no")


@pytest.fixture
def no_thread_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither SYNTHFM_THREADS nor OMP_NUM_THREADS set."""
    monkeypatch.delenv(hardware.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return monkeypatch


def test_thread_count_precedence(no_thread_env: pytest.MonkeyPatch) -> None:
    """SYNTHFM_THREADS over OMP_NUM_THREADS over the physical cores; bad values name the variable."""
    no_thread_env.setattr(hardware, "physical_cores", lambda: 6)
    assert hardware.thread_count() == 6
    no_thread_env.setenv("OMP_NUM_THREADS", "2")
    assert hardware.thread_count() == 2
    no_thread_env.setenv(hardware.THREADS_ENV, "3")
    assert hardware.thread_count() == 3
    no_thread_env.setenv(hardware.THREADS_ENV, "0")
    with pytest.raises(SynthfmError, match="SYNTHFM_THREADS='0'"):
        hardware.thread_count()


def test_set_threads_sets_torch_once(no_thread_env: pytest.MonkeyPatch) -> None:
    """The first call sets torch's threads; later calls keep them unless forced."""
    before = torch.get_num_threads()
    try:
        no_thread_env.setenv(hardware.THREADS_ENV, "1")
        assert hardware.set_threads(force=True) == 1 and torch.get_num_threads() == 1
        no_thread_env.setenv(hardware.THREADS_ENV, "2")
        assert hardware.set_threads() == 1 and torch.get_num_threads() == 1
        assert hardware.set_threads(force=True) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_physical_cores_is_within_the_affinity_mask() -> None:
    """At least one core, never more than the CPUs this process may run on."""
    assert 1 <= hardware.physical_cores() <= (len(hardware.os.sched_getaffinity(0)))


@pytest.mark.parametrize(("native", "expected"), [(False, "no"), (True, "bf16")])
def test_auto_precision_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    """`auto` (the default) is bf16 only with native bf16; explicit values are kept; an fp32 machine keeps the
    config hash that configs had before `auto` existed."""
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: native)
    cfg = pretrain_config({"recipe": "mae_vit_tiny_demo"})
    assert cfg.mixed_precision == expected
    assert cfg.model_dump()["mixed_precision"] == expected  # what the run's config.yaml records
    assert pretrain_config({"recipe": "mae_vit_tiny_demo", "mixed_precision": "bf16"}).mixed_precision == "bf16"
    assert pretrain_config({"recipe": "mae_vit_tiny_demo", "mixed_precision": "no"}).mixed_precision == "no"
    assert (config_hash(cfg) == DEMO_HASH) is (not native)


def test_cpu_without_bf16_flags_is_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU reporting no avx512_bf16/amx_bf16 is not native; one reporting avx512_bf16 is."""
    hardware.native_bf16.cache_clear()
    try:
        monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda: [])
        assert hardware.native_bf16("cpu") is False
        assert hardware.resolve_precision("auto", "cpu") == "no"
        hardware.native_bf16.cache_clear()
        monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda: ["avx512_bf16"])
        assert hardware.native_bf16("cpu") is True
        assert hardware.resolve_precision("auto", "cpu") == "bf16"
    finally:
        hardware.native_bf16.cache_clear()


def test_compile_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto compiles long runs on CUDA where inductor can run, never on a CPU; explicit values win."""
    monkeypatch.setattr(hardware, "can_compile", lambda device_type=None: True)
    assert hardware.resolve_compile("auto", hardware.COMPILE_MIN_STEPS, "cuda") is True
    assert hardware.resolve_compile("auto", hardware.COMPILE_MIN_STEPS - 1, "cuda") is False
    assert hardware.resolve_compile("auto", 10**6, "cpu") is False
    assert hardware.resolve_compile(True, 1, "cpu") is True
    assert hardware.resolve_compile(False, 10**6, "cuda") is False
    monkeypatch.setattr(hardware, "can_compile", lambda device_type=None: False)
    assert hardware.resolve_compile("auto", 10**6, "cuda") is False


def test_bf16_warning_only_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit bf16 on a non-native device warns with the measured slowdown; native or fp32 does not."""
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device=None: 17.25)
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: False)
    msg = hardware.precision_warning("bf16", torch.device("cpu"))
    assert msg is not None and "17.2x the time of fp32" in msg
    assert hardware.precision_warning("no", torch.device("cpu")) is None
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: True)
    assert hardware.precision_warning("bf16", torch.device("cpu")) is None


def test_bf16_slowdown_is_a_positive_ratio() -> None:
    """The probe returns a finite time ratio (its size is the machine's business)."""
    ratio = hardware.bf16_slowdown(torch.device("cpu"), n=64, reps=1)
    assert 0 < ratio < float("inf")
