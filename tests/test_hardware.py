"""The dtype default follows the hardware: bf16 only where the CPU multiplies bf16 natively."""

from __future__ import annotations

import platform

import pytest
import torch

from bmrag import hardware, loading
from bmrag.encoder import BMRetrieverEncoder
from bmrag.loading import resolve_dtype

ZEN1_FLAGS = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})  # AMD EPYC (Zen 1) as read on a dev machine
SAPPHIRE_RAPIDS_FLAGS = ZEN1_FLAGS | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
ZEN4_FLAGS = ZEN1_FLAGS | {"avx512f", "avx512_bf16"}


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch):
    def use(value: frozenset[str]) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: value)
    return use


@pytest.mark.parametrize(("cpu", "expected"), [(ZEN1_FLAGS, "float32"), (SAPPHIRE_RAPIDS_FLAGS, "bfloat16"),
                                                (ZEN4_FLAGS, "bfloat16"), (frozenset(), "float32")])
def test_cpu_default_is_bf16_only_with_native_bf16_matmuls(flags, cpu, expected):
    flags(cpu)
    assert loading.default_dtype("cpu") == expected
    assert resolve_dtype(None, "cpu") == {"float32": torch.float32, "bfloat16": torch.bfloat16}[expected]


def test_explicit_dtype_wins_over_the_hardware_default(flags, tiny_llama_dir):
    flags(ZEN1_FLAGS)
    assert BMRetrieverEncoder.from_pretrained(tiny_llama_dir, device="cpu").dtype == torch.float32
    enc = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, device="cpu", dtype="bfloat16")
    assert enc.dtype == torch.bfloat16 and enc.describe()["dtype"] == "bfloat16"
    flags(SAPPHIRE_RAPIDS_FLAGS)
    assert BMRetrieverEncoder.from_pretrained(tiny_llama_dir, device="cpu").describe()["dtype"] == "bfloat16"


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 /proc/cpuinfo")
def test_this_machine_reads_its_own_flags():
    # Every x86-64 CPU has sse2; an empty set would mean the parser missed the flags line.
    assert "sse2" in hardware.cpu_flags()
    assert hardware.describe_cpu()


@pytest.mark.parametrize(("cpu", "expected"), [(ZEN1_FLAGS, "float32"), (SAPPHIRE_RAPIDS_FLAGS, "bfloat16")])
def test_vllm_cpu_server_gets_the_dtype_of_the_hardware(flags, cpu, expected):
    import sys

    from bmrag import serve

    flags(cpu)
    spec = serve.server_spec("SmolLM2-135M-Instruct", device="cpu", python=sys.executable)
    assert spec.command[spec.command.index("--dtype") + 1] == expected


def test_local_generator_takes_the_hardware_default_unless_told(flags):
    from bmrag.llama_index.llm import LocalLLM

    flags(ZEN1_FLAGS)
    assert LocalLLM(max_new_tokens=4).dtype == "float32"
    flags(SAPPHIRE_RAPIDS_FLAGS)
    assert LocalLLM(max_new_tokens=4, dtype="float32").dtype == "float32"
