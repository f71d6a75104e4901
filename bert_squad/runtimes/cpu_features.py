"""Which reduced precisions this CPU runs natively, read from the kernel's CPU flags.

bf16 pays off only where the CPU multiplies bf16 itself (AVX512_BF16 or AMX-BF16);
elsewhere OpenVINO emulates it and is slower than fp32, so bf16 is refused there.
int8 runs everywhere OpenVINO does (AVX2 at least); VNNI or AMX-INT8 make it fast.
The decisions are pure functions of a flag set, so they are tested on made-up CPUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, Iterable, Union

from bert_squad.runtimes import CPU_PRECISIONS

CPUINFO = Path("/proc/cpuinfo")


class PrecisionUnsupported(ValueError):
    """The CPU lacks the instructions a precision needs; the message says what to use instead."""


def read_flags(cpuinfo: Union[str, Path] = CPUINFO) -> FrozenSet[str]:
    """The flags of the first processor in /proc/cpuinfo (all cores of one machine share them);
    empty where the file is missing (not Linux), so every check then says "unknown"."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@dataclass(frozen=True)
class CpuSupport:
    """What a flag set offers for inference."""

    avx2: bool
    avx512: bool
    bf16: bool  # native bf16 dot products: AVX512_BF16 or AMX-BF16
    amx: bool  # AMX tiles with bf16 or int8
    vnni: bool  # int8 dot products: AVX512_VNNI, AVX_VNNI or AMX-INT8

    @classmethod
    def from_flags(cls, flags: Iterable[str]) -> "CpuSupport":
        f = frozenset(flags)
        amx = "amx_tile" in f and bool({"amx_bf16", "amx_int8"} & f)
        return cls(avx2="avx2" in f, avx512="avx512f" in f,
                   bf16="avx512_bf16" in f or ("amx_tile" in f and "amx_bf16" in f), amx=amx,
                   vnni=bool({"avx512_vnni", "avx_vnni"} & f) or ("amx_tile" in f and "amx_int8" in f))

    def describe(self) -> str:
        """One line for logs and the ready line: the instructions that matter here."""
        names = [name for name, present in (("AVX2", self.avx2), ("AVX-512", self.avx512), ("BF16", self.bf16),
                                             ("AMX", self.amx), ("VNNI", self.vnni)) if present]
        return "+".join(names) if names else "none of AVX2/AVX-512/BF16/AMX/VNNI"


def check_precision(precision: str, flags: Iterable[str]) -> str:
    """Refuse a CPU precision this CPU cannot run well (PrecisionUnsupported says why and what to use);
    otherwise return a note for the user, empty when there is nothing to say."""
    if precision not in CPU_PRECISIONS:
        raise PrecisionUnsupported(f"precision {precision!r} is not a CPU precision; choose one of {CPU_PRECISIONS}")
    cpu = CpuSupport.from_flags(flags)
    if precision == "bf16" and not cpu.bf16:
        raise PrecisionUnsupported(
            f"this CPU has no native bf16 arithmetic (neither AVX512_BF16 nor AMX-BF16 in /proc/cpuinfo; it has "
            f"{cpu.describe()}): bf16 would be emulated and run slower than fp32. Use --precision int8 (fastest, "
            "within about 1 F1 of fp32) or --precision fp32 (exact)"
        )
    if precision == "int8" and not cpu.avx2:
        raise PrecisionUnsupported(
            f"int8 inference needs at least AVX2, which this CPU lacks ({cpu.describe()}); use --precision fp32"
        )
    if precision == "int8" and not cpu.vnni:
        return "this CPU has no VNNI or AMX-INT8: int8 runs on AVX2, correct but slower than on a VNNI CPU"
    return ""
