"""What the CPU onnxruntime runs on can do, from its feature flags (``/proc/cpuinfo``).

Two decisions depend on it: the channel multiple that keeps onnxruntime's blocked (NCHWc)
convolutions — MLAS sets its block to 16 floats with AVX-512F and 8 with AVX2, and a Conv
whose channel counts do not divide into blocks falls back to a slower path — and whether its
u8 × s8 kernels can saturate (x86 without VNNI). Flags that cannot be read count as the
common case (AVX2-class x86).
"""

from __future__ import annotations

__all__ = ["cpu_flags", "is_x86", "nchwc_block", "simd_level"]

import functools
import platform


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The ``flags`` of the first CPU in ``/proc/cpuinfo``; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block here: 16 on x86 with AVX-512F, else 8 (AVX2; also
    the default elsewhere, where it still suits 8-float SIMD kernels)."""
    flags = cpu_flags()
    return 16 if is_x86() and flags is not None and "avx512f" in flags else 8


def simd_level() -> str:
    """The x86 SIMD level that decides onnxruntime's fastest kernels here, for reports:
    "AVX-512 VNNI", "AVX-512", "AVX-VNNI", "AVX2", "AVX2-less x86"; the machine name elsewhere.
    int8 speed-ups depend on it most (VNNI runs u8 × s8 dot products in one instruction)."""
    flags = cpu_flags()
    if not is_x86() or flags is None:
        return platform.machine()
    if "avx512f" in flags:
        return "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512"
    if "avx2" in flags:
        return "AVX-VNNI" if "avx_vnni" in flags else "AVX2"
    return "AVX2-less x86"
