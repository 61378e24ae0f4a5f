"""Machine behaviours beyond the self-checks, and the bad inputs of issue 2."""

import json
import os
import signal
import threading
import time

import pytest

from emu import events, layout, x86
from emu.config import MachineConfig
from emu.decisions import RandomSource, ReplayError, ReplaySource, SimplestSource
from emu.events import (
    EventKind,
    ExceptionEvent,
    Faulted,
    HypercallEvent,
    InterruptEvent,
    NmiRaised,
    Serialize,
    TextStore,
    ViewUpdate,
)
from emu.fetch_view import Grain
from emu.hypercall import Hypercall
from emu.native_cpu import NativeCpu
from emu.path import Kind
from emu.selftest import Scripted
from emu.verdict import MachineConfigError
from tests.conftest import VAR, one_changed

FAULTY = """
start:
    mov ebx, 1
bad:
    .byte 0x0f, 0x0b
    mov eax, HC_FINISH
    out HC_PORT, eax
df:
    mov edi, 8
    lea rsi, [rsp + 8]
    mov eax, HC_FAULT
    out HC_PORT, eax
"""


def test_fault_without_any_handler_is_a_triple_fault_verdict(build):
    m = build(FAULTY, ["start"])
    res = m.run(Scripted())
    v = res.verdict
    assert v.kind == "guest_fault" and v.event == "triple_fault"
    assert v.cpu == 0 and v.rip == m.symbol("bad") and v.fetched[:2] == b"\x0f\x0b"
    assert "#UD" in v.detail and "#DF" in v.detail


def test_fault_without_handler_goes_to_the_double_fault_handler(build):
    m = build(FAULTY, ["start"], {x86.DF: "df"})
    v = m.run(Scripted()).verdict
    assert v.kind == "guest_fault" and v.event == "double_fault"
    assert v.rip == m.symbol("bad") and "#UD" in v.detail


def test_double_fault_when_the_stack_is_unusable(build):
    src = """
start:
    mov rsp, 0x1000          # not mapped: the #BP frame cannot be pushed
    int3
handler:
    iretq
"""
    v = build(src, ["start"], {x86.BP: "handler"}).run(Scripted()).verdict
    assert v.kind == "guest_fault" and v.event == "triple_fault"
    assert "stack push faults" in v.detail


def test_divide_error_and_general_protection_reach_their_handlers(build):
    src = """
de_start:
    xor ecx, ecx
    div ecx
    mov eax, HC_FINISH
    out HC_PORT, eax
gp_start:
    mov rax, 0x0000800000000000
gp_insn:
    mov rbx, qword ptr [rax]
    mov eax, HC_FINISH
    out HC_PORT, eax
handler:                       # record the vector's frame RIP and give up
    mov rax, qword ptr [rsp]
    mov qword ptr [V], rax
    mov eax, HC_FINISH
    out HC_PORT, eax
gp_handler:
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [V], rax
    mov rax, qword ptr [rsp]
    mov qword ptr [V + 8], rax
    mov eax, HC_FINISH
    out HC_PORT, eax
"""
    m = build(src, ["de_start"], {x86.DE: "handler"})
    assert m.run(Scripted()).verdict.ok
    assert m.mem.read_u64(VAR) == m.symbol("de_start") + 2  # the DIV itself: a fault
    m = build(src, ["gp_start"], {x86.GP: "gp_handler"})
    res = m.run(Scripted())
    assert res.verdict.ok
    assert m.mem.read_u64(VAR) == m.symbol("gp_insn") and m.mem.read_u64(VAR + 8) == 0
    assert m.symbol("gp_insn") not in res.truth.ips(0)  # a fault does not retire


def test_runaway_guest_hangs_instead_of_running_forever(build):
    m = build("spin:\n    jmp spin\n", ["spin", "spin"], insn_budget=3000)
    v = m.run(RandomSource(3)).verdict
    assert v.kind == "hang" and v.event == "budget" and v.rip == m.symbol("spin")


COUNTDOWN = """
start:
    mov ecx, 20000
again:
    dec ecx
    jnz again
    mov eax, HC_FINISH
    out HC_PORT, eax
"""


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as under a terminal, even where the tests run with SIGINT
    ignored (a shell's background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_unicorn_ends_the_run_instead_of_vanishing(build, monkeypatch,
                                                                 python_sigint):
    """SIGINT while Unicorn emulates: its handler runs on entry to one of our ctypes hooks,
    where a KeyboardInterrupt used to be printed and dropped (most of the time: 32 runs of 40)
    and the run went on (emu/held_sigint.py). Now every run ends with KeyboardInterrupt at the
    next step, SIGINT's handler is Python's again, and the machine runs on as if fresh."""
    m = build(COUNTDOWN, ["start", "start"])
    if isinstance(m.cpus[0], NativeCpu):
        pytest.skip("spies on the reference's Python code hook; the native one has none")
    effect = x86.effect
    for trial in range(5):
        retired, go = [0], threading.Event()

        def spy(code, retired=retired, go=go):  # inside the code hook, once per instruction
            retired[0] += 1
            if retired[0] == 300:
                go.set()
            return effect(code)
        monkeypatch.setattr(x86, "effect", spy)
        # from another thread, as a terminal's Ctrl-C, while this one is inside Unicorn
        sender = threading.Thread(target=lambda go=go: (go.wait(),
                                                        os.kill(os.getpid(), signal.SIGINT)))
        sender.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                m.run(RandomSource(trial))
        finally:
            sender.join()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(x86, "effect", effect)
    again, fresh = m.run(RandomSource(9)), build(COUNTDOWN, ["start", "start"]).run(RandomSource(9))
    assert (again.path, again.ticks, again.verdict.kind) == (fresh.path, fresh.ticks, "pass")


LONG_SPIN = COUNTDOWN.replace("20000", "1000000")  # seconds on either engine, not minutes


def test_ctrl_c_during_a_long_run_ends_it_on_either_engine(build, python_sigint):
    """The same, without a spy in the code hook (the native engine has no Python there):
    SIGINT 50 ms into a run of seconds, from another thread. The native hooks run with the
    GIL held; Python's handler runs once control is back in Python between steps, and
    HeldSigint turns it into KeyboardInterrupt there. (With HeldSigint's check disabled the
    run ends normally seconds later and pytest.raises fails.)"""
    m = build(LONG_SPIN, ["start", "start"], insn_budget=10**7)
    for _trial in range(3):
        sender = threading.Thread(target=lambda: (time.sleep(0.05),
                                                  os.kill(os.getpid(), signal.SIGINT)))
        started = time.monotonic()
        sender.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                m.run(RandomSource(1))
        finally:
            sender.join()
        assert time.monotonic() - started < 5  # ended by the signal, not by the program
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_all_cpus_halted_with_interrupts_off_is_a_deadlock(build):
    m = build("stop:\n    hlt\n    jmp stop\n", ["stop", "stop"], interrupts=False)
    v = m.run(RandomSource(1)).verdict
    assert v.kind == "hang" and v.event == "deadlock"


def test_halted_cpu_wakes_on_ipi(build):
    # safe_halt(): `sti; hlt` with the STI shadow closing the lost-wakeup window
    src = """
sleeper:
    mov qword ptr [V + 16], 1
    sti
    hlt
    mov qword ptr [V], 5
    mov eax, HC_FINISH
    out HC_PORT, eax
waker:
    cmp qword ptr [V + 16], 1
    jne waker
    mov edi, 1
    mov esi, 0x40
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
    mov eax, HC_FINISH
    out HC_PORT, eax
irq:
    lock inc qword ptr [V + 8]
    iretq
"""
    for seed in range(20):
        m = build(src, ["sleeper", "waker"], {0x40: "irq"}, interrupts=False)
        assert m.run(RandomSource(seed)).verdict.ok, seed
        assert m.mem.read_u64(VAR) == 5 and m.mem.read_u64(VAR + 8) == 1


# cpu0 waits with IF clear until cpu1 has sent it an IPI, then sets IF; the IRQ handler
# records where the interrupted flow continues.
STI_SHADOW = """
cpu0:
    pause                         # a spin-wait: cpu1 sends the IPI meanwhile
    cmp qword ptr [V + 16], 1
    jne cpu0
    sti
shadowed:
    nop
after:
    nop
    mov eax, HC_FINISH
    out HC_PORT, eax
cpu1:
    mov edi, 1
    mov esi, 0x40
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
    mov qword ptr [V + 16], 1
    mov eax, HC_FINISH
    out HC_PORT, eax
irq:
    mov rax, qword ptr [rsp]
    mov qword ptr [V], rax
    iretq
"""


def test_no_ipi_in_the_sti_shadow(build):
    m = build(STI_SHADOW, ["cpu0", "cpu1"], {0x40: "irq"}, interrupts=False)
    res = m.run(Scripted(quantum=1))  # a chance to deliver at every boundary
    assert res.verdict.ok
    # not at the boundary right after STI: the first one it can take is after `nop`
    assert m.mem.read_u64(VAR) == m.symbol("after")


def test_event_mode_takes_a_pending_ipi_where_the_sti_shadow_ends(build):
    """In event mode a CPU runs to its next visible event; the end of an STI shadow is one, so
    an IPI left pending while IF was clear is taken there (it used to run on to FINISH with the
    IPI never delivered)."""
    m = build(STI_SHADOW, ["cpu0", "cpu1"], {0x40: "irq"}, interrupts=False, event_mode=True)
    res = m.run(SimplestSource())
    assert res.verdict.ok and m.mem.read_u64(VAR) == m.symbol("after")


@pytest.mark.parametrize("perturb", [False, True], ids=["replay", "one_decision_changed"])
def test_spontaneous_nmi_is_a_recorded_decision(build, perturb):
    """Replayed on the machine after a reset, the path gives the same ground truth, byte for
    byte; with one decision changed (an NMI raised at another step) the check sees a
    difference."""
    src = """
loop:
    lock inc qword ptr [V]
    cmp qword ptr [V], 200
    jb loop
    mov eax, HC_FINISH
    out HC_PORT, eax
nmi:
    lock inc qword ptr [V + 8]
    iretq
"""
    m = build(src, ["loop"], {x86.NMI: "nmi"}, spontaneous_nmis=(2,))
    res = m.run(RandomSource(11))
    assert res.verdict.ok
    raised = [c for c in res.path if c.kind is Kind.NMI_RAISE and c.value == 1]
    assert m.mem.read_u64(VAR + 8) == len(raised) == 2
    m.reset()
    again = m.run(one_changed(res.path, Kind.NMI_RAISE) if perturb else ReplaySource(res.path))
    assert again.truth is not res.truth
    assert (again.truth.digest() == res.truth.digest()) is not perturb


def test_a_result_keeps_its_own_records(build):
    """Each RunResult owns its ground truth, events and sideband: the next run of the machine
    (which resets it) changes none of them."""
    src = """
entry:
    nop
    nop
    mov rdi, 0xffffffff81000000
    lea rsi, [rip + old]
    lea rdx, [rip + old]
    mov ecx, 2
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    mov eax, HC_FINISH
    out HC_PORT, eax
old:
    .byte 0x66, 0x90
"""
    m = build(src, ["entry", "entry"])
    first = m.run(RandomSource(1))
    retired, events, sideband = ([list(r) for r in first.truth.retired],
                                 list(first.truth.events), list(first.sideband))
    digest = first.truth.digest()
    second = m.run(RandomSource(3))
    assert second.truth.digest() != digest and second.sideband != sideband  # another schedule
    assert first.truth.digest() == digest and first.truth.events == events
    assert [list(r) for r in first.truth.retired] == retired and first.sideband == sideband


def test_sixteen_cpus(build):
    src = """
entry:
    mov rax, qword ptr gs:[0]      # the CPU number from the per-CPU area
    lock bts qword ptr [V], rax
    mov eax, HC_FINISH
    out HC_PORT, eax
"""
    m = build(src, ["entry"] * 16)
    assert m.run(RandomSource(2)).verdict.ok
    assert m.mem.read_u64(VAR) == (1 << 16) - 1


def test_raw_register_reads_match_the_binding(build):
    """Cpu.reg reads RIP, RFLAGS and RSP through the C API: the same values as the binding,
    all 64 bits of them."""
    from unicorn import x86_const as X
    m = build("entry:\n    mov eax, HC_FINISH\n    out HC_PORT, eax\n", ["entry"] * 2)
    assert m.run(RandomSource(0)).verdict.ok
    for cpu in m.cpus:
        for name, value in (("rip", 0xFFFF_FFFF_8100_0123), ("rsp", 0xFFFF_C900_0000_7FF8),
                            ("rflags", 0x246)):
            reg = getattr(X, f"UC_X86_REG_{name.upper()}")
            cpu.uc.reg_write(reg, value)
            assert cpu.reg(name) == cpu.uc.reg_read(reg) == value


def test_data_reads_of_text_see_memory_not_the_view(build):
    src = """
reader:
    cmp qword ptr [V + 8], 1
    jne reader
    mov al, byte ptr [rip + site]  # a data read of text
    mov byte ptr [V], al
    call site                      # an instruction fetch of the same bytes (stale view)
    mov byte ptr [V + 1], al
    mov eax, HC_FINISH
    out HC_PORT, eax
writer:
    lea rdi, [rip + site]
    mov byte ptr [rdi + POKE_DELTA + 1], 0x22
    mov qword ptr [V + 8], 1
    mov eax, HC_FINISH
    out HC_PORT, eax
site:
    mov al, 0x11
    ret
"""
    from emu import hypercall
    from emu.asm import assemble
    from emu.loader import CpuBoot, GuestImage
    from emu.machine import Machine

    prog = assemble(src, layout.TEXT_BASE, hypercall.EQUATES | {
        "V": VAR, "POKE_DELTA": layout.POKE_BASE - layout.TEXT_BASE})
    m = Machine(MachineConfig(ncpus=2), GuestImage(
        programs=[prog], boot=[CpuBoot(prog.sym("reader")), CpuBoot(prog.sym("writer"))]))
    assert m.run(Scripted(view=lambda _a: 0)).verdict.ok
    data_read, executed = m.mem.read(VAR, 2)
    assert data_read == 0xB0                 # the opcode, read as data
    assert executed == 0x11                  # the fetch still saw the old immediate


@pytest.mark.parametrize("bad", [
    {"ncpus": 0}, {"ncpus": 65}, {"grain": "word"}, {"max_quantum": 0}, {"insn_budget": 0},
    {"text_size": 0x1234}, {"ncpus": 1, "spontaneous_nmis": (1, 1)},
])
def test_invalid_configuration_is_a_clear_error(bad):
    with pytest.raises((MachineConfigError, ValueError)) as err:
        MachineConfig(**bad)
    assert str(err.value)


def test_grain_names():
    assert MachineConfig(grain="line").grain is Grain.LINE
    assert MachineConfig(grain=16).grain is Grain.FETCH_BLOCK


def test_image_entry_outside_text_is_rejected(build):
    from emu.loader import CpuBoot, GuestImage
    from emu.machine import Machine
    with pytest.raises(MachineConfigError, match="entry"):
        Machine(MachineConfig(ncpus=1), GuestImage(programs=[], boot=[CpuBoot(layout.DATA_BASE)]))


def test_replay_of_a_foreign_path_is_refused(build):
    src = "a:\n    mov eax, HC_FINISH\n    out HC_PORT, eax\n"
    m = build(src, ["a", "a"])
    res = m.run(RandomSource(4))
    wrong = list(res.path)
    from emu.path import Choice
    wrong[0] = Choice(Kind.VIEW, 9, 0)
    with pytest.raises(ReplayError, match="decision 0"):
        m.run(ReplaySource(wrong))
    with pytest.raises(ReplayError, match="path ended"):
        m.run(ReplaySource(res.path[:1]))


def test_unknown_hypercall_is_a_guest_fault(build):
    src = "a:\n    mov eax, 99\n    out HC_PORT, eax\n"
    v = build(src, ["a"]).run(Scripted()).verdict
    assert v.kind == "guest_fault" and "unknown hypercall 99" in v.detail


def test_guest_assert_carries_its_message(build):
    src = """
a:
    mov edi, 42
    lea rsi, [rip + msg]
    mov eax, HC_ASSERT
    out HC_PORT, eax
msg:
    .byte 0x62, 0x61, 0x64, 0x00
"""
    v = build(src, ["a"]).run(Scripted()).verdict
    assert v.kind == "guest_assert" and "42: bad" in v.detail and v.extra["code"] == 42


def test_sideband_hypercall_records_old_and_new_bytes_with_the_tsc(build):
    src = """
a:
    mov rdi, 0xffffffff81000000
    lea rsi, [rip + old]
    lea rdx, [rip + new]
    mov ecx, 2
    mov eax, HC_SIDEBAND
    out HC_PORT, eax
    mov eax, HC_FINISH
    out HC_PORT, eax
old:
    .byte 0x66, 0x90
new:
    .byte 0xeb, 0x00
"""
    m = build(src, ["a"])
    res = m.run(Scripted())
    (rec,) = res.sideband
    assert (rec.addr, rec.old, rec.new, rec.cpu) == (layout.TEXT_BASE, b"\x66\x90", b"\xeb\x00", 0)
    assert rec.tick == res.truth.retired[0][5][0]  # the tick of the hypercall instruction


def test_a_flushed_translation_buffer_changes_nothing(monkeypatch):
    """Unicorn flushes its translated code when the buffer is full (emu/cpu.py TCG_BUFFER).
    With the smallest buffer it takes, 1 MiB, flushed every few dozen `static_key` schedules,
    the same seeds take the same decisions, retire the same instructions at the same ticks
    and end with the same verdicts."""
    from emu import cpu
    from harness.run import Runner
    from harness.scenario.shipped import SCENARIOS

    def runs():
        machine = Runner(SCENARIOS["static_key"], decode=False).machine
        out = []
        for seed in range(60):
            res = machine.run(RandomSource(seed))
            out.append((tuple(c.value for c in res.path), res.verdict.kind, res.ticks,
                        [list(r) for r in res.truth.retired]))
        return machine.cpus[0].uc.ctl_get_tcg_buffer_size(), out

    default = cpu.TCG_BUFFER
    size, usual = runs()
    monkeypatch.setattr(cpu, "TCG_BUFFER", 1 << 20)
    small, flushed = runs()
    assert (size, small) == (default, 1 << 20) and default > small
    assert flushed == usual


T = layout.TEXT_BASE
EVERY_KIND = [
    ExceptionEvent(5, 1, x86.PF, T + 0x10, T + 0x100, T + 0x10, error_code=2),
    ExceptionEvent(5, 1, x86.BP, T + 0x11, T + 0x100, T + 0x10),
    InterruptEvent(6, 0, x86.CALL_FUNCTION_VECTOR, T + 0x20, T + 0x200, T + 0x20),
    ViewUpdate(7, 1, T + 0x20, 16), ViewUpdate(7, 1, T + 0x20, 1, stale=True),
    Serialize(8, 1, 3, ipi=x86.CALL_FUNCTION_VECTOR), Serialize(9, 0, 0),
    HypercallEvent(10, 0, Hypercall.MARK, (1, 0x2A)), TextStore(11, 0, T + 0x20, b"\xcc"),
    NmiRaised(12, 1), Faulted(13, 1, T + 0x30, b"\x0f\x0b"),
]


def test_every_event_kind_round_trips_through_its_json():
    """Events are typed records; events.jsonl renders them in its format and is parsed back
    into the same records (`textpoke decode` reads them so)."""
    assert {type(e).kind for e in EVERY_KIND} == set(EventKind)
    for e in EVERY_KIND:
        assert events.from_json(json.loads(json.dumps(e.to_json()))) == e
    assert [json.dumps(EVERY_KIND[i].to_json(), sort_keys=True) for i in (0, 4, 5, 7)] == [
        '{"cpu": 1, "error_code": 2, "handler": "0xffffffff81000100", "kind": "exception", '
        '"name": "#PF", "rip": "0xffffffff81000010", "source": "0xffffffff81000010", "t": 5, '
        '"vector": 14}',
        '{"cpu": 1, "kind": "view_update", "size": 1, "stale": true, '
        '"start": "0xffffffff81000020", "t": 7}',
        '{"cause": "ipi 0xfc", "cpu": 1, "kind": "serialize", "t": 8, "units": 3}',
        '{"args": ["0x1", "0x2a"], "cpu": 0, "kind": "hypercall", "name": "mark", "t": 10}']


@pytest.mark.parametrize("doc,error", [
    ({"t": 1, "cpu": 0, "kind": "teleport"}, ValueError),
    ({"t": 1, "cpu": 0, "kind": "text_store", "addr": 7, "bytes": "cc"}, ValueError),
    ({"t": "1", "cpu": 0, "kind": "nmi_raised"}, TypeError),
    ({"t": 1, "cpu": 0, "kind": "serialize", "cause": "reboot", "units": 0}, ValueError),
    ({"t": 1, "cpu": 0, "kind": "faulted", "ip": "0x10"}, KeyError),
])
def test_a_malformed_event_is_refused(doc, error):
    with pytest.raises(error):
        events.from_json(doc)


FAULTY_PF = """
start:
    int3
    mov rax, 0xffffffff81000000
    mov byte ptr [rax], 0x90       # text through its executable mapping: #PF(P|W)
    mov eax, HC_FINISH
    out HC_PORT, eax
bp:
    iretq
pf:
    add qword ptr [rsp + 8], 3     # past the 3-byte store
    add rsp, 8                     # the error code
    iretq
"""


def test_a_runs_events_round_trip(build):
    """A real run's events (a fault with an error code, an INT3, hypercalls) parse back into
    the records the machine made."""
    m = build(FAULTY_PF, ["start"], {x86.PF: "pf", x86.BP: "bp"})
    res = m.run(Scripted())
    assert res.verdict.ok
    assert {type(e) for e in res.truth.events} >= {ExceptionEvent, HypercallEvent, Faulted}
    assert any(isinstance(e, ExceptionEvent) and e.error_code for e in res.truth.events)
    parsed = [events.from_json(json.loads(line))
              for line in res.truth.events_jsonl().splitlines()]
    assert parsed == res.truth.events and len(parsed) > 3


def test_an_nmi_may_arrive_before_an_undefined_instruction(build):
    """Event mode asks for a spontaneous NMI before every instruction of a run, an invalid one
    included (it used to skip it: the #UD came first, always)."""
    from emu.decisions import PolicySource
    from emu.events import ExceptionEvent, InterruptEvent

    src = """
cpu0:
    nop
    ud2
nmi:
    mov qword ptr [V], 1
    mov eax, HC_FINISH
    out HC_PORT, eax
ud:
    mov qword ptr [V], 2
    mov eax, HC_FINISH
    out HC_PORT, eax
"""
    asked = []

    def policy(request):
        if request.kind is Kind.NMI_RAISE:
            asked.append(request)
            return int(len(asked) == 2)  # not at the step's start: before `ud2`
        return 1 if request.kind in (Kind.NMI, Kind.IPI) else 0

    m = build(src, ["cpu0"], {x86.NMI: "nmi", x86.UD: "ud"}, event_mode=True,
              spontaneous_nmis=(1,))
    res = m.run(PolicySource(policy))
    kinds = [type(e) for e in res.truth.events if isinstance(e, InterruptEvent | ExceptionEvent)]
    assert kinds[:1] == [InterruptEvent] and m.mem.read_u64(VAR) == 1


def test_registers_read_and_written_through_the_c_api_equal_the_bindings(build):
    """Cpu.reg / table_reg / set_reg's fast paths (general registers, selectors into a
    cleared value, IDTR / GDTR into a uc_x86_mmr) give what the binding's reg_read gives. The
    scratch value is dirtied first: a selector read that did not clear it would show its
    upper bytes."""
    from unicorn import x86_const as X

    from emu.cpu import _MMR, _RAW64, _SELECTORS

    m = build(FAULTY, ["start"])
    m.run(Scripted())
    cpu = m.cpus[0]
    for name in (*_RAW64, *_SELECTORS, *_MMR):
        cpu._u64.value = 0xFFFF_FFFF_FFFF_FFFF
        read = cpu.table_reg(name) if name in _MMR else cpu.reg(name)
        assert read == cpu.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")), name
    with pytest.raises(ValueError, match="table_reg"):  # a tuple is never an int register
        cpu.reg("idtr")
    for name, value in (("rax", 0x1122_3344_5566_7788), ("rsp", 0xFFFF_8880_0000_1000)):
        cpu.set_reg(name, value)
        assert cpu.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) == value
    assert cpu.reg("cs") == layout.KERNEL_CS


def test_an_error_inside_a_python_hook_is_raised_not_a_guest_fault(build, monkeypatch):
    """A TLB fill whose translation raises makes Unicorn fail the fill; the binding keeps the
    exception. It is the harness's error (exit 3 at the command line), not a fault of the
    guest's (a verdict, exit 1)."""
    from emu.layout import Layout

    m = build(FAULTY, ["start"])

    def broken(self, *args):
        raise RuntimeError("translate is broken")

    monkeypatch.setattr(Layout, "translate", broken)  # a fresh machine: its first run fills
    with pytest.raises(RuntimeError, match="translate is broken"):
        m.run(Scripted())


def test_an_instruction_length_is_remembered_by_its_bytes():
    """Machine._insn_length (the pending-fetch decision's) keeps each length by the
    instruction's bytes: other bytes at the same offset are another length. (Perturbed:
    remembered by the offset, the jump poked over a NOP keeps the NOP's length.)"""
    import ctypes
    from types import SimpleNamespace

    import capstone

    from emu.machine import Machine

    m = SimpleNamespace(_lengths={}, _md=capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64))
    buf = (ctypes.c_uint8 * 32)(*([0x90] * 32))
    assert Machine._insn_length(m, buf, 4) == 1
    buf[4:9] = [0xE9, 0, 0, 0, 0]  # jmp rel32
    assert Machine._insn_length(m, buf, 4) == 5
    buf[4:9] = [0x90] * 5
    assert Machine._insn_length(m, buf, 4) == 1 and len(m._lengths) == 2
