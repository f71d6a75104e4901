"""CPU feature detection decides which precisions may be exported; checked on made-up CPUs."""
import pytest

from bert_squad.runtimes.cpu_features import CpuSupport, PrecisionUnsupported, check_precision, read_flags

pytestmark = pytest.mark.pure

HASWELL = {"sse4_2", "avx", "avx2", "fma"}
CASCADE_LAKE = HASWELL | {"avx512f", "avx512bw", "avx512_vnni"}
ALDER_LAKE = HASWELL | {"avx_vnni"}
ZEN4 = CASCADE_LAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
OLD = {"sse4_2", "avx"}


@pytest.mark.parametrize("flags, bf16, vnni, amx", [
    (HASWELL, False, False, False), (CASCADE_LAKE, False, True, False), (ALDER_LAKE, False, True, False),
    (ZEN4, True, True, False), (SAPPHIRE_RAPIDS, True, True, True),
    (HASWELL | {"amx_bf16"}, False, False, False),  # an AMX type flag without tiles is no AMX
    (HASWELL | {"amx_tile", "amx_bf16"}, True, False, True),
])
def test_support_from_flags(flags, bf16, vnni, amx):
    cpu = CpuSupport.from_flags(flags)
    assert (cpu.bf16, cpu.vnni, cpu.amx) == (bf16, vnni, amx)


@pytest.mark.parametrize("flags", [HASWELL, CASCADE_LAKE, ALDER_LAKE, OLD, set()])
def test_bf16_refused_without_native_bf16_and_names_the_alternatives(flags):
    with pytest.raises(PrecisionUnsupported) as info:
        check_precision("bf16", flags)
    message = str(info.value)
    assert "AVX512_BF16" in message and "--precision int8" in message and "--precision fp32" in message


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS])
def test_bf16_accepted_where_native(flags):
    assert check_precision("bf16", flags) == ""


def test_int8_runs_on_avx2_with_a_note_and_needs_avx2():
    assert check_precision("int8", ZEN4) == "" and check_precision("int8", ALDER_LAKE) == ""
    assert "slower" in check_precision("int8", HASWELL)
    with pytest.raises(PrecisionUnsupported, match="AVX2"):
        check_precision("int8", OLD)


def test_fp32_always_and_fp16_is_no_cpu_precision():
    assert check_precision("fp32", OLD) == ""
    with pytest.raises(PrecisionUnsupported, match="not a CPU precision"):
        check_precision("fp16", ZEN4)


def test_read_flags_takes_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert read_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert read_flags(tmp_path / "missing") == frozenset()
