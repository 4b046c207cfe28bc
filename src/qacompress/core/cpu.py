"""The CPU a figure was measured on, and what its instruction set means for INT8.

OpenVINO's INT8 kernels pay only where the CPU multiplies 8-bit integers into 32-bit sums in one
instruction (AVX-512 VNNI, AVX-VNNI, AMX). On AVX2-only CPUs the u8 x s8 products are summed in
pairs into *saturating 16-bit* registers (`vpmaddubsw`) first: slower than FP32 in practice, and
inexact when two full-range products overflow int16 — which is what NNCF's `overflow_fix` (7-bit
weights) prevents. Every timing qacompress writes carries `cpu_info()` so figures from different
machines are never compared as if they were one.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: ISA features that decide how a QA model runs fastest, as /proc/cpuinfo names them.
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; falls back to the platform's processor string."""
    name, flags = platform.processor() or platform.machine(), set()
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                name = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    return name, flags


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """`{"name", "isa": [...], "cores", "openvino_capabilities": [...], "int8_dot_product": bool}`."""
    import os

    name, flags = _cpuinfo()
    try:
        import openvino as ov

        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - the figure stays useful without it
        capabilities = []
    isa = [f for f in ISA_FEATURES if f in flags]
    return {
        "name": name,
        "isa": isa,
        "cores": os.cpu_count(),
        "openvino_capabilities": capabilities,
        "int8_dot_product": any(f in flags for f in _INT8_DOT),
    }


def has_int8_dot_product() -> bool:
    """True where the CPU sums 8-bit products into 32 bits in one instruction (VNNI or AMX)."""
    return bool(cpu_info()["int8_dot_product"])


def describe() -> str:
    """One line: model name, the ISA features that matter, OpenVINO's capabilities."""
    info = cpu_info()
    isa = " ".join(info["isa"]) or "no AVX2"
    kind = "VNNI/AMX" if info["int8_dot_product"] else "no VNNI/AMX"
    caps = ",".join(info["openvino_capabilities"])
    return f"{info['name']} ({info['cores']} cores; {isa}; {kind}; OpenVINO: {caps})"
