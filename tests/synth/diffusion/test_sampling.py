"""Sampling dtype: bf16 only where the device computes it natively."""

from __future__ import annotations

import pytest
import torch

from synthfm import hardware
from synthfm.synth.diffusion.sampling import sampling_dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: native)
    assert sampling_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert sampling_dtype("float32", torch.device("cpu")) == torch.float32
    assert sampling_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
