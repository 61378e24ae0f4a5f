"""Errors and reports that point into the user's code (issue 17, items 5 and 6): assembler
errors name the op or site and its line, Raw effects are checked, site labels can be
referenced, verdicts name `symbol+offset` and the site, nested exceptions show their chain,
and a stack overflow is a fault naming its CPU."""

from __future__ import annotations

import json

import pytest

from emu import layout
from emu.asm import assemble
from emu.decisions import RandomSource, SimplestSource
from emu.layout import Access, Layout
from harness.run import Runner, write_artifacts
from harness.scenario import shipped
from harness.scenario.build import build
from harness.scenario.op import Raw, StaticKey
from harness.scenario.scenario import Scenario
from harness.scenario.site import JumpLabel, KprobeSite
from harness.scenario.text_poke_loc import ScenarioError


def _mine(*ops, sites=None, **kw) -> Scenario:
    return Scenario("mine", "a user's scenario", cpus=2,
                    sites=sites if sites is not None else [JumpLabel("j0", key="k")],
                    ops=list(ops), **kw)


# ---- item 5: errors point into the user's code

@pytest.mark.parametrize(("code", "where", "why"), [
    ("    nop\n    mov rax, rbx, rcx\n", "op 1 (Raw), line 2: `mov rax, rbx, rcx`",
     "invalid operand"),
    ("    nop\n    nop\n    jmp nowhere_{i}\n", "op 1 (Raw), line 3: `jmp nowhere_1`",
     "no symbol 'nowhere_1'"),
    ("    nop dword ptr [rax+rax]\n", "op 1 (Raw), line 1: `nop dword ptr [rax+rax]`",
     "not a kernel NOP"),
])
def test_assembler_error_names_the_op_and_its_line(code, where, why):
    with pytest.raises(ScenarioError) as e:
        build(_mine(StaticKey("k", True), Raw(code)))
    assert f"scenario mine, {where}: " in str(e.value) and why in str(e.value)


def test_assembler_error_in_extra_asm_names_it():
    scn = _mine(StaticKey("k", True), extra_asm="helper:\n    ret\n    movx eax, 1\n")
    with pytest.raises(ScenarioError, match=r"scenario mine, extra_asm, line 3: `movx eax, 1`: "
                                             r"invalid mnemonic"):
        build(scn)


@pytest.mark.parametrize(("effect", "message"), [
    ({"jo": True}, "effect names no site 'jo'"),
    ({"j0": "on"}, "puts site 'j0' in state 'on', which a JumpLabel cannot be in"),
])
def test_raw_effect_is_checked(effect, message):
    with pytest.raises(ScenarioError, match=message):
        build(_mine(Raw("    nop\n", effect=effect)))


def test_site_labels_can_be_referenced_without_subclassing():
    """A probed function's second instruction is `site_<name> + 1`; its end `<name>_after`.
    The patcher checks both from a Raw op: a wrong reference is a #UD, a guest_fault."""
    code = ("    lea rdi, [rip + site_kp0 + 1]\n    cmp byte ptr [rdi], 0x48\n    je ok1_{i}\n"
            "    ud2\nok1_{i}:\n    lea rdi, [rip + kp0_after]\n    lea rsi, [rip + site_kp0]\n"
            "    sub rdi, rsi\n    cmp rdi, 5\n    je ok2_{i}\n    ud2\nok2_{i}:\n")
    out = Runner(_mine(Raw(code), sites=[KprobeSite("kp0")])).run(SimplestSource())
    assert out.verdict.ok, str(out.verdict)


# ---- item 6: reports that point at the cause

def test_symbolize_names_the_nearest_symbol_at_or_below():
    prog = assemble("a:\n    nop\n    nop\nb:\n    ret\n", layout.TEXT_BASE, name="t")
    assert [prog.symbolize(layout.TEXT_BASE + i) for i in range(3)] == ["a", "a+0x1", "b"]
    assert prog.symbolize(layout.TEXT_BASE + 3) == ""


def test_verdict_names_symbol_and_site(tmp_path):
    out = Runner(shipped.get("z6_unsorted_batch"), "buggy").run(RandomSource(1))
    assert out.verdict.kind == "unexpected_trap"
    text = str(out.verdict)
    assert "at 0x" in text and "(site_jl2, site jl2)" in text, text
    assert "INT3 at 0xffffffff" in text and "claimed" in text
    write_artifacts(out, 1, tmp_path)
    where = json.loads((tmp_path / "verdict.json").read_text())["where"]
    assert (where["symbol"], where["site"]) == ("site_jl2", "jl2")


@pytest.mark.parametrize(("handler", "vector", "at"), [
    ("    mov rax, qword ptr [0x10]\n    iretq\n", 14, "my_nmi"),
    # the IRETQ itself faults (a bad CS in the frame): the handler has not returned
    ("    mov qword ptr [rsp + 8], 0x33\n    iretq\n", 13, "my_nmi+0x9"),
])
def test_nested_exception_is_reported_with_its_chain(handler, vector, at):
    """A fault inside the NMI handler: the report shows NMI -> the fault, not only the fault."""
    send_nmi = ("    mov edi, 1\n    mov esi, 2\n    mov eax, HC_SEND_IPI\n    out HC_PORT, eax\n"
                "    nop\n")
    scn = _mine(Raw(send_nmi), handlers={"nmi": "my_nmi"}, extra_asm="my_nmi:\n" + handler)
    v = Runner(scn).run(SimplestSource()).verdict
    assert v.kind == "guest_fault" and v.symbol == at, str(v)
    assert [(f.vector, f.symbol) for f in v.nested][1:] == [(vector, at)], str(v)
    assert v.nested[0].vector == 2 and v.nested[0].symbol, v.nested
    assert "; nested exception, depth 2: NMI at 0x" in str(v), str(v)
    assert f" at 0x{v.rip:x} ({at})" in str(v), str(v)
    assert v.to_json()["nested"][1]["symbol"] == at


def test_stack_overflow_is_a_fault_naming_the_cpu():
    out = Runner(_mine(Raw("overflow_{i}:\n    push rax\n    jmp overflow_{i}\n"))).run(
        SimplestSource())
    assert out.verdict.kind == "guest_fault" and out.verdict.event == "stack_overflow"
    assert "stack overflow on cpu0" in str(out.verdict)


def test_overflow_while_delivering_is_named_too():
    """An INT3 with 16 bytes of stack left: pushing its frame reaches the guard page."""
    low = layout.STACK_BASE + layout.STACK_GUARD  # CPU 0's lowest stack byte
    out = Runner(_mine(Raw(f"    mov rsp, {low + 16:#x}\n    int3\n"))).run(SimplestSource())
    assert out.verdict.event == "stack_overflow", str(out.verdict)
    assert "stack overflow on cpu0 (pushing the frame of #BP at" in str(out.verdict)


def test_stacks_have_guard_pages():
    """Below each CPU's stack an unmapped page: CPU 1 overflowing does not write CPU 0's."""
    lay = Layout(ncpus=3)
    for cpu in range(3):
        low, top = lay.stack_range(cpu)
        assert lay.translate(low, Access.WRITE) is not None
        assert lay.translate(low - 8, Access.WRITE) is None
        assert lay.guard_owner(low - 8) == cpu and lay.guard_owner(low) is None
        assert top - low == lay.stack_size


def test_stacks_end_where_the_fetch_pages_begin():
    """The stacks' physical region ends below the fast engine's fetch pages: a layout whose
    stacks would reach them is refused (one page less fits)."""
    fits = Layout(ncpus=1, stack_size=layout.MAX_STACKS_SIZE - layout.STACK_GUARD)
    assert layout.PHYS_STACKS + fits.stacks_size == layout.PHYS_FETCH_POOL
    with pytest.raises(ValueError, match=r"the stacks \(1 of .*\) exceed"):
        Layout(ncpus=1, stack_size=fits.stack_size + layout.PAGE)


def test_an_iret_leaves_the_deliveries_that_failed_into_its_handler_too():
    """A #PF that could not be delivered escalated to #DF; the #DF handler's IRET returns from
    both, so neither stays in a later verdict's nested chain."""
    from emu.cpu import HandlerFrame, _leave_handler

    outer = HandlerFrame(3, 0x10)
    handling = [outer, HandlerFrame(14, 0x20, delivered=False), HandlerFrame(8, 0x20)]
    left = _leave_handler(handling)
    assert handling == [outer] and [f.vector for f in left] == [14, 8]
