import pytest

from emu import layout
from emu.asm import KERNEL_NOPS, AsmError, assemble
from emu.selftest import program


def test_labels_become_symbols():
    p = assemble("a:\n    nop\nb:\n    jmp a\nc: ret\n", layout.TEXT_BASE)
    assert p.symbols == {"a": layout.TEXT_BASE, "b": layout.TEXT_BASE + 1,
                         "c": layout.TEXT_BASE + 3}
    assert p.code == bytes.fromhex("90ebfdc3")


def test_knop_emits_the_kernel_nops():
    for n, raw in KERNEL_NOPS.items():
        assert assemble(f"KNOP {n}", layout.TEXT_BASE).code == raw


def test_keystone_multibyte_nop_misencoding_is_caught():
    with pytest.raises(AsmError, match="not a kernel NOP"):
        assemble("nop dword ptr [rax+rax]", layout.TEXT_BASE)


def test_bad_source_is_an_error_naming_the_source():
    with pytest.raises(AsmError, match="mine.S"):
        assemble("mov rax, [", layout.TEXT_BASE, name="mine.S")
    with pytest.raises(AsmError, match="duplicate"):
        assemble("a: nop\na: nop", layout.TEXT_BASE)


def test_selftest_program_checks_against_capstone():
    p = program()
    assert p.code and p.sym("site_insn") == layout.TEXT_BASE
