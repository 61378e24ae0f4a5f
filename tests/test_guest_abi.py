"""Issue 14 section 5: the guest ABI is declared once (scenario/guest_abi.py), the assembly and
the harness's packers both come from it, and tables are sized from the scenario."""

import re
import struct
from pathlib import Path

import capstone
import pytest

from emu import layout
from emu.decisions import RandomSource
from emu.machine import Machine
from harness.oracles import torn_execution
from harness.run import Runner
from harness.scenario import guest
from harness.scenario import guest_abi as abi
from harness.scenario.build import build
from harness.scenario.op import StaticKey
from harness.scenario.scenario import Scenario
from harness.scenario.shipped import SCENARIOS
from harness.scenario.site import JumpLabel, KprobeSite
from harness.scenario.text_poke_loc import ScenarioError

GUEST_CODE = Path(__file__).resolve().parent.parent / "guest_code"
KERNEL_SOURCES = ("alternative.S", "users.S", "int3_selftest.S")  # selftest.S: the machine's


# ---------------------------------------------------------------- the declarations
def test_text_poke_loc_is_linux_5_15s():
    """arch/x86/kernel/alternative.c: s32 rel_addr; s32 disp; u8 len; u8 opcode;
    u8 text[POKE_MAX_OPCODE_SIZE]; u8 old; -- 16 bytes, 256 to a page."""
    tpl = abi.TEXT_POKE_LOC
    assert dict(tpl.offsets) == {"rel_addr": 0, "disp": 4, "len": 8, "opcode": 9, "text": 10,
                                 "old": 15}
    assert tpl.size == 16 and guest.TP_VEC_MAX == 256
    assert abi.TEXT_POKE_INSN.size == 5 and abi.TEXT_POKE_INSN.offset("disp") == 1  # packed


def test_layout_rules_align_pad_and_refuse():
    s = abi.Struct("t", "T", (abi.Field("a", abi.Scalar.U8), abi.Field("b", abi.Scalar.U64),
                              abi.Field("c", abi.Scalar.U8)))
    assert (s.offset("b"), s.offset("c"), s.size) == (8, 16, 24)  # natural alignment, tail pad
    packed = abi.Struct("t", "T", s.fields, packed=True)
    assert (packed.offset("b"), packed.size) == (1, 10)
    assert abi.KPROBE.size == 64 and abi.KPROBE.offset("copied") == 41
    with pytest.raises(ValueError, match="pad"):
        abi.Struct("t", "T", s.fields, size_to=16)
    with pytest.raises(ValueError, match="declared twice"):
        abi.equates((abi.STATIC_KEY, abi.STATIC_KEY))


def test_every_format_is_the_declared_size_and_packs_round_trip():
    for s in abi.STRUCTS:
        assert struct.calcsize(s.format) == s.size, s.cname
    raw = abi.KPROBE.pack(addr=0x1111, slot=0x2222, detour=0x3333, opcode=0x55,
                          copied=b"\x48\x89\xe5\x53")
    assert raw[:8] == (0x1111).to_bytes(8, "little") and raw[40:45] == b"\x55\x48\x89\xe5\x53"
    assert abi.KPROBE.unpack(raw)["detour"] == 0x3333 and len(raw) == 64
    with pytest.raises(TypeError, match="no field 'hit'"):
        abi.KPROBE.pack(hit=1)
    with pytest.raises(ValueError, match="5 bytes > 4"):
        abi.KPROBE.pack(copied=b"12345")


def test_the_per_cpu_area_is_what_the_machine_writes():
    """Machine._load fills the per-CPU area GS_BASE points at; the guest reads it through
    PERCPU_*: both must be the one declaration."""
    built = build(SCENARIOS["static_key"], cpus=3)
    m = Machine(built.config, built.image)
    lay = built.config.layout()
    for cpu in range(3):
        area = abi.PERCPU.unpack(m.mem.read(lay.percpu(cpu), abi.PERCPU.size))
        assert area["cpu"] == cpu and area["stack_top"] == lay.stack_top(cpu)
    assert abi.PERCPU.size == layout.PERCPU_SIZE


# ---------------------------------------------------------------- the guest uses them
def _insns(prog, label, n):
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    off = prog.sym(label) - prog.base
    return list(md.disasm(prog.code[off:off + 16 * n], prog.sym(label), n))


def _imm(insn):
    return [o.imm for o in insn.operands if o.type == capstone.x86.X86_OP_IMM][-1]


def _disp(insn):
    return next(o.mem.disp for o in insn.operands if o.type == capstone.x86.X86_OP_MEM)


def test_the_assembled_guest_walks_its_tables_with_the_declared_strides():
    """The machine code itself, not the equate table: the kprobe walk's step (it was 32 for
    64-byte entries), the jump-table, static-call and text_poke_loc strides, the state table's
    row (one generation per op, plus the initial one)."""
    prog = build(SCENARIOS["kprobe_two"]).program
    step = _insns(prog, "kp_next", 1)[0]
    assert (step.mnemonic, _imm(step)) == ("add", abi.KPROBE.size)
    find = [i for i in _insns(prog, "kp_find", 10) if i.mnemonic in ("cmp", "lock inc", "mov")]
    assert [_disp(i) for i in find[:4]] == [abi.KPROBE.offset(f)
                                            for f in ("addr", "armed", "hits", "slot")]
    strides = {"sks_loop": abi.JUMP_ENTRY.size, "scu_loop": abi.STATIC_CALL_SITE.size,
               "ph_bs": abi.TEXT_POKE_LOC.size, "co_hi": len(SCENARIOS["kprobe_two"].ops) + 1}
    for label, size in strides.items():
        mul = next(i for i in _insns(prog, label, 8) if i.mnemonic == "imul")
        assert _imm(mul) == size, label


_REGS = set("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip".split())
_LIT = re.compile(r"^(0x[0-9a-fA-F]+|\d+)$")
# Literal displacements that are not structure members, each with its reason.
_ALLOWED = {"cmp byte ptr [r8 + 4], 0"}  # the last byte of x86_nops[5], as memcmp compares it


def bare_offsets(text: str) -> list[str]:
    """Lines that use a numeric structure offset or stride where a generated equate belongs:
    a memory operand off a register (not the stack's own frame) or off a data object with a
    literal and no field equate, gs:[literal], a literal shl / imul / add stride, or the
    lea [r + r*2] multiply."""
    out = []
    for raw in text.splitlines():
        line = re.sub(r"^[\w.]+:\s*", "", raw.split("#")[0].strip())
        if not line or line in _ALLOWED:
            continue
        op = line.split()[0]
        for seg, inner in re.findall(r"(\w+:)?\[([^\]]*)\]", line):
            terms = [t.strip() for t in re.split(r"[+-]", inner)]
            lits = [t for t in terms if _LIT.match(t)]
            if seg == "gs:" and lits:
                out.append(raw)
                continue
            if not lits or terms[0] == "rsp" or op == "lea" and lits == ["1"]:
                continue  # no literal; the function's own stack frame; lea as an increment
            names = [t for t in terms if not _LIT.match(t) and t.split("*")[0] not in _REGS]
            if not any(t.isupper() and not t.startswith("V_") for t in names):
                out.append(raw)
        m = re.match(r"^(shl|imul|add)\s+(.*)$", line)
        if m:
            args = [a.strip() for a in m.group(2).split(",")]
            if _LIT.match(args[-1]) and "[" not in args[0] and args[0] != "rsp":
                out.append(raw)
        if re.search(r"\[(\w+)\s*\+\s*\1\s*\*\s*[248]\]", line):
            out.append(raw)
    return out


def test_no_bare_structure_offsets_in_the_guest_code():
    for name in KERNEL_SOURCES:
        assert bare_offsets((GUEST_CODE / name).read_text()) == [], name
    for scn in SCENARIOS.values():
        assert bare_offsets(scn.source()) == [], scn.name


@pytest.mark.parametrize("line", [
    "    add rdx, 32",                                # the kprobe walk's step that was wrong
    "    cmp qword ptr [rdx + 16], 0",                # kprobe.armed
    "    lea rsi, [rbx + 40]",                        # &kprobe.opcode
    "    mov rax, qword ptr gs:[0]",                  # the per-CPU area's cpu number
    "    shl rax, 4",                                 # the text_poke_loc stride
    "    lea r14, [rbx + rbx*2]",                     # the jump_entry stride, by parts
    "    imul r8, r8, 16",                            # the state table's row
    "    lock inc qword ptr [KPROBE_kp0 + 24]",       # kprobe.hits off an instance
    "    cmp qword ptr [V_SCRATCH + 64], 1",          # a scratch layout's member
])
def test_the_offset_scan_catches_what_the_old_guest_code_had(line):
    assert bare_offsets(line) == [line]


# ---------------------------------------------------------------- two of each
def test_two_kprobes_both_trap_into_their_own_slot():
    """Before the stride came from the declaration, every seed ended in unexpected_trap at
    the second kprobe's INT3 (the walk read entry 0 and then the middle of it)."""
    runner = Runner(SCENARIOS["kprobe_two"], decode=False)
    out = runner.run_seed(0)
    assert out.ok, out.verdict
    ran = {ip for cpu in range(1, out.built.cpus) for _, ip, _ in out.result.truth.retired[cpu]}
    for i, name in enumerate(("kp0", "kp1")):
        entry = runner.built.data[f"KPROBE_{name}"]
        assert entry == runner.built.data["V_KPROBES"] + i * abi.KPROBE.size
        kp = abi.KPROBE.unpack(runner.machine.mem.read(entry, abi.KPROBE.size))
        assert kp["hits"] > 0 and kp["addr"] == out.built.program.sym(f"site_{name}")
        assert out.built.program.sym(f"{name}_slot") in ran
        assert out.built.program.sym(f"{name}_detour") in ran


def test_two_keys_patch_only_their_own_sites():
    out = Runner(SCENARIOS["static_key_two"], decode=False).run_seed(0)
    assert out.ok, out.verdict
    prog = out.built.program
    k0 = {prog.sym("site_jl0"), prog.sym("site_jl2")}
    k1 = {prog.sym("site_jl1"), prog.sym("site_jl3")}
    batches = [out.result.sideband[i:i + 2] for i in range(0, 8, 2)]  # one op, one batch each
    assert [{r.addr for r in b} for b in batches] == [k0, k1, k0, k1]


def test_two_static_call_keys_retarget_only_their_own_sites():
    out = Runner(SCENARIOS["static_call_two"], decode=False).run_seed(0)
    assert out.ok, out.verdict
    prog = out.built.program
    s0 = {prog.sym("site_sc0"), prog.sym("site_sc2")}
    s1 = {prog.sym("site_sc1"), prog.sym("site_sc3")}
    assert [{r.addr for r in out.result.sideband[i:i + 2]} for i in range(0, 8, 2)] == \
        [s0, s1, s1, s0]


# ---------------------------------------------------------------- sized from the sites
def _many(n: int, **more) -> Scenario:
    return Scenario(f"static_key_{n}", f"one key, {n} jump-label sites, enabled then disabled",
                    sites=[JumpLabel(f"jl{i}", key="k0") for i in range(n)],
                    ops=[StaticKey("k0", True), StaticKey("k0", False)], **more)


def test_1024_sites_on_one_key_flip_in_full_vectors():
    """One key's 1,024 jump labels enabled then disabled (Linux batches 164 sites and more):
    text_poke_queue() flushes whenever TP_VEC_MAX entries are queued, so each op is 4 batches
    of 256. The correct sequence passes on 2 CPUs (the machine's verdict and the torn-execution
    oracle; the PT trace is left out for time: this run alone is about 1.2 M instructions,
    ~10 s)."""
    scn = _many(1024, cpus=2, insn_budget=2_000_000, passes_after=1)
    runner = Runner(scn, decode=False)
    assert runner.built.config.data_size > 0x20000  # grown past the machine's default
    result = runner.machine.run(RandomSource(0))
    assert result.verdict.ok, result.verdict
    assert torn_execution(result.truth, runner.built.sites) is None
    prog = runner.built.program
    batch = prog.sym("text_poke_bp_batch")
    assert sum(ip == batch for _, ip, _ in result.truth.retired[0]) == 2 * 1024 // 256
    sites = [prog.sym(f"site_jl{i}") for i in range(1024)]
    assert [r.addr for r in result.sideband] == sites + sites  # every site, in sorted batches
    assert all(runner.machine.mem.read(a, 5) == bytes.fromhex("0f1f440000") for a in sites)


def test_a_scenario_beyond_the_data_region_is_refused_by_name():
    """~112 bytes of tables per jump label: 160,000 of them pass the 16 MiB data region. The
    error comes before anything is assembled."""
    with pytest.raises(ScenarioError, match=r"scenario static_key_160000: its data .* 160000 "
                                            r"sites\) does not fit in the data region"):
        build(_many(160_000))


def test_region_sizes_grow_by_pages_and_refuse_the_text_beyond_its_region():
    data = guest.kernel_data(2, 1024, ngen=3, njumps=1024, nkeys=1)
    text, size = guest.region_sizes("scenario s", 0x10001, data)
    assert text == 0x11000 and size % layout.PAGE == 0
    assert size >= data.cursor - layout.DATA_BASE > 0x20000
    assert guest.region_sizes("scenario s", 0x100, guest.kernel_data(2)) == (0x10000, 0x20000)
    with pytest.raises(ScenarioError, match="scenario s: its text .* does not fit in the text"):
        guest.region_sizes("scenario s", layout.MAX_TEXT_SIZE + 1, data)


def test_a_kprobe_named_like_a_guest_equate_is_refused():
    with pytest.raises(ScenarioError, match="KPROBE_SIZE names a key, kprobe"):
        build(Scenario("clash", "x", sites=[KprobeSite("SIZE")], ops=[]))
