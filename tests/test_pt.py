"""Issue 4: PT packets, IP compression, the encoder, the decoder, sideband, snapshots."""

import random
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu import hypercall, layout
from emu.asm import assemble
from emu.config import MachineConfig
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine
from emu.selftest import Scripted
from emu.text_poke_record import TextPokeRecord
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS
from harness.trace import kcore, sideband, verify
from harness.trace.pt import last_ip as L
from harness.trace.pt.decoder import Ambiguous, decode
from harness.trace.pt.dump import dump
from harness.trace.pt.encoder import TraceConfig, encode_cpu
from harness.trace.pt.flow import async_events, cpu_flow
from harness.trace.pt.image import Image
from harness.trace.pt.packets import (
    Cbr,
    Fup,
    ModeExec,
    PacketError,
    Pad,
    Psb,
    PsbEnd,
    Tip,
    TipPgd,
    TipPge,
    Tnt,
    TscPacket,
    decode_packet,
    iter_packets,
)
from harness.trace.pt.query import DecodeError, items

KERNEL = st.integers(0xFFFF800000000000, 2**64 - 1)
USER = st.integers(0, 0x00007FFFFFFFFFFF)
ANY_IP = st.one_of(KERNEL, USER, st.integers(0, 2**64 - 1))
IPB = st.sampled_from([0, 1, 2, 3, 4, 6])


def _payload(ipbytes: int):
    return st.integers(0, (1 << (8 * L.PAYLOAD_BYTES[ipbytes])) - 1)


PACKETS = st.one_of(
    st.just(Pad()), st.just(Psb()), st.just(PsbEnd()),
    st.lists(st.booleans(), min_size=1, max_size=47).map(lambda b: Tnt(tuple(b))),
    *[IPB.flatmap(lambda ib, c=c: _payload(ib).map(lambda p, ib=ib: c(ib, p)))
      for c in (Tip, TipPge, TipPgd, Fup)],
    st.integers(0, 2**56 - 1).map(TscPacket), st.integers(0, 255).map(Cbr),
    st.builds(ModeExec, st.booleans(), st.booleans()),
)


@given(PACKETS)
def test_every_packet_kind_round_trips(pkt):
    raw = pkt.encode()
    got, size = decode_packet(raw, 0)
    assert size == len(raw) and got == pkt


@given(st.lists(ANY_IP, min_size=1, max_size=30))
def test_ip_compression_against_a_last_ip_model(ips):
    enc, dec = L.LastIp(), L.LastIp()
    last = 0  # the model: the last IP, 0 after a PSB
    for ip in ips:
        ipbytes, payload = enc.compress(ip)
        raw = Tip(ipbytes, payload).encode()
        pkt, _ = decode_packet(raw, 0)
        assert dec.decompress(pkt.ipbytes, pkt.payload) == ip
        # the smallest legal form (reference §1.1 rule)
        assert len(raw) - 1 == min(n for ib, n in L.PAYLOAD_BYTES.items()
                                   if ib and _legal(ib, ip, last))
        last = ip


def _legal(ipbytes, ip, last):
    if ipbytes == 1:
        return ip >> 16 == last >> 16
    if ipbytes == 2:
        return ip >> 32 == last >> 32
    if ipbytes == 3:
        return ip >> 47 in (0, (1 << 17) - 1)
    if ipbytes == 4:
        return ip >> 48 == last >> 48
    return ipbytes == 6


@given(st.lists(KERNEL, min_size=2, max_size=20))
def test_kernel_addresses_never_need_more_than_six_bytes(ips):
    enc = L.LastIp()
    for ip in ips:
        if ip >> 47 == (1 << 17) - 1:
            assert enc.compress(ip)[0] != L.FULL


def test_reference_encodings():
    """Byte strings from the SDM / ../shared/reference/intel-pt.md §1."""
    T, N = True, False
    assert Tnt((T,)).encode() == b"\x06" and Tnt((N,)).encode() == b"\x04"
    assert Tnt((T, N, T)).encode() == b"\x1a" and Tnt((T,) * 6).encode() == b"\xfe"
    assert Tnt((N, N, N, N, N, T)).encode() == b"\x82"
    assert Tnt((T,) * 7).encode()[:2] == b"\x02\xa3"
    assert decode_packet(bytes.fromhex("02a3030000000000"), 0)[0] == Tnt((T,))
    assert Tip(*L.LastIp().compress(0xFFFFFFFF81000010)).encode() == \
        bytes.fromhex("6d10000081ffff")
    last = L.LastIp(0xFFFFFFFF81000010)
    assert Tip(*last.compress(0xFFFFFFFF81000030)).encode() == bytes.fromhex("2d3000")
    assert Psb().encode() == bytes([0x02, 0x82] * 8) and PsbEnd().encode() == b"\x02\x23"
    assert ModeExec().encode() == b"\x99\x01" and Cbr(32).encode() == b"\x02\x03\x20\x00"
    assert TscPacket(0x1234).encode() == b"\x19\x34\x12\x00\x00\x00\x00\x00"
    assert TipPgd(0, 0).encode() == b"\x01"


# ---------------------------------------------------------------- hand-built flows
def _run(src, entries, idt=None, **config):
    prog = assemble(src, layout.TEXT_BASE, hypercall.EQUATES | {
        "V": layout.DATA_BASE + layout.GUEST_DATA_OFFSET}, "t.S")
    m = Machine(MachineConfig(ncpus=len(entries), **config), GuestImage(
        programs=[prog], boot=[CpuBoot(prog.sym(e)) for e in entries],
        idt={v: prog.sym(h) for v, h in (idt or {}).items()}))
    res = m.run(Scripted(quantum=5))
    assert res.verdict.ok, res.verdict
    flows = [cpu_flow(res.truth.retired[c], async_events(res.truth.events, c),
                      res.final_rips[c]) for c in range(len(entries))]
    return prog, res, flows


def _decode_exact(res, flows, cfg, records=()):
    streams = [encode_cpu(f, r, cfg) for f, r in zip(flows, res.final_rips, strict=True)]
    for backward in (False, True):
        rep = verify.check(streams, flows, res.text_start, res.text_end, list(records), backward)
        assert rep.verdict is None, rep.verdict
    return streams


LOOP = """
start:
    mov ecx, 400
loop:
    test ecx, 1
    jz even
    call leaf
even:
    dec ecx
    jnz loop
    mov eax, HC_FINISH
    out HC_PORT, eax
leaf:
    ret
"""


def test_tnt_across_psb():
    prog, res, flows = _run(LOOP, ["start"])
    streams = _decode_exact(res, flows, TraceConfig(tsc_period=10**9, psb_period=64))
    pkts = list(iter_packets(streams[0]))
    psbs = [i for i, (_, p) in enumerate(pkts) if isinstance(p, Psb)]
    assert len(psbs) >= 3  # the stream restarted several times mid-loop
    for i in psbs[1:]:  # PSB+ holds status only, and a FUP of where the flow is
        end = next(j for j in range(i, len(pkts)) if isinstance(pkts[j][1], PsbEnd))
        body = [p for _, p in pkts[i:end]]
        assert not any(isinstance(p, Tnt | Tip) for p in body)
        assert any(isinstance(p, Fup) for p in body)
    assert any(isinstance(p, Tnt) and len(p.bits) > 6 for _, p in pkts)  # long TNT used


@pytest.mark.parametrize("compress", [True, False])
def test_ret_compression_on_and_off(compress):
    prog, res, flows = _run(LOOP, ["start"])
    streams = _decode_exact(res, flows, TraceConfig(tsc_period=10**9, ret_compression=compress))
    leaf_ret_targets = [p for _, p in iter_packets(streams[0]) if isinstance(p, Tip)]
    if compress:
        assert not leaf_ret_targets  # every RET was a TNT bit
    else:
        assert len(leaf_ret_targets) == 200  # every RET was a TIP


def test_fup_tip_for_int3_and_nested_interrupts():
    src = """
start:
    nop
site:
    int3
after:
    mov eax, HC_FINISH
    out HC_PORT, eax
bp:
    mov edi, 1                    # inside the #BP handler (IF=0): an NMI to ourselves
    mov esi, 2
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
    nop
    nop
    iretq
nmi:
    nop
    iretq
"""
    prog, res, flows = _run(src, ["start"], {3: "bp", 2: "nmi"})
    events = [i for i in flows[0] if i.event is not None]
    assert [e.ip for e in events][0] == prog.sym("site")  # FUP(CLIP) for INT3
    assert events[1].cont == prog.sym("nmi")  # nested: the NMI inside the #BP handler
    streams = _decode_exact(res, flows, TraceConfig())
    pkts = [p for _, p in iter_packets(streams[0])]
    fups = [i for i, p in enumerate(pkts) if isinstance(p, Fup)]
    assert isinstance(pkts[fups[0] + 1], Tip)  # nothing between a FUP and its TIP
    assert isinstance(pkts[fups[1] + 1], Tip)
    # the image never needs the INT3: decode with the site holding a NOP instead
    text = bytearray(res.text_start)
    text[prog.sym("site") - layout.TEXT_BASE] = 0x90
    rep = verify.check(streams, flows, bytes(text), bytes(text), [])
    assert rep.verdict is None


def test_never_between_fup_and_tip_and_starts_right():
    out = Runner(SCENARIOS["static_call"]).run_seed(1)
    assert out.ok
    for stream in out.streams:
        pkts = [p for _, p in iter_packets(stream)]
        assert [type(p) for p in pkts[:6]] == [Psb, TscPacket, Cbr, PsbEnd, ModeExec, TipPge]
        assert isinstance(pkts[-2], Fup) and pkts[-1] == TipPgd(0, 0)
        for i, p in enumerate(pkts[:-2]):
            if isinstance(p, Fup) and not _in_psb(pkts, i):
                assert isinstance(pkts[i + 1], Tip)


def _in_psb(pkts, i):
    for p in reversed(pkts[:i]):
        if isinstance(p, PsbEnd):
            return False
        if isinstance(p, Psb):
            return True
    return False


def test_decoder_never_guesses_at_coarse_timing():
    """With time known only at PSBs, instructions at poked bytes cannot be placed: ambiguous,
    never a silently wrong flow."""
    runner = Runner(SCENARIOS["static_key"], trace=TraceConfig(tsc_period=10**9))
    kinds = {runner.run_seed(s).verdict.kind for s in range(3)}
    assert kinds <= {"ambiguous", "pass"} and "ambiguous" in kinds


def test_decoding_without_the_records_diverges():
    out = Runner(SCENARIOS["static_key"]).run_seed(0)
    rep = verify.check(out.streams, out.flows, out.result.text_start, out.result.text_end, [])
    assert rep.verdict is not None and rep.verdict.kind in ("decode_divergence", "decode_error")


@pytest.mark.parametrize("name,variant,tsc_period", [("static_key", None, 1),
                                                     ("z4_bytewise", "buggy", 1),
                                                     ("static_key", None, 10**9)])
def test_decoder_fast_paths_change_nothing(monkeypatch, name, variant, tsc_period):
    """The per-version instruction cache and the loop through unbranching instructions, direct
    jumps and same-window TNT bits give exactly the steps and the error of decoding every
    instruction through the full fetch (timing exact, torn, and too coarse to place the
    pokes)."""
    from harness.trace.pt.decoder import _Walker
    out = Runner(SCENARIOS[name], variant, trace=TraceConfig(tsc_period=tsc_period)).run_seed(0)
    recs = out.result.sideband

    def decoded():
        return [(r.steps, str(r.error)) for r in
                (decode(s, Image(layout.TEXT_BASE, start, recs, back), len(f) + 16)
                 for back, start in ((False, out.result.text_start),
                                     (True, out.result.text_end))
                 for s, f in zip(out.streams, out.flows, strict=True))]

    fast = decoded()
    monkeypatch.setattr(Image, "settled", lambda self, hi: False)
    monkeypatch.setattr(_Walker, "_straight_on", lambda self: None)
    assert decoded() == fast and sum(len(steps) for steps, _ in fast) > 1000


def test_instruction_cache_drops_only_what_a_write_touches():
    """After a record is applied, the walker's cache keeps the instructions whose bytes (the
    INSN_MAX read at their IP) it did not touch, and only those."""
    from harness.trace.pt.insn_cache import InsnCache
    image = Image(0x1000, bytes(64), [TextPokeRecord(5, 0, 0x1020, b"\x00", b"\xcc")])
    cache = InsnCache()
    cache.version = image.version
    cache.by_ip = {ip: (b"", None) for ip in (0x1000, 0x1011, 0x1012, 0x1020, 0x1021)}
    image.advance(6)
    cache.sync(image)
    assert sorted(cache.by_ip) == [0x1000, 0x1011, 0x1021]
    assert cache.version == image.version == 1


def test_image_forward_and_backward_agree():
    recs = [TextPokeRecord(10, 0, 0x1000, b"\x0f\x1f\x44\x00\x00", b"\xe9\x01\x00\x00\x00"),
            TextPokeRecord(20, 0, 0x1000, b"\xe9\x01\x00\x00\x00", b"\x0f\x1f\x44\x00\x00")]
    start = bytes(16)
    start = start[:0] + b"\x0f\x1f\x44\x00\x00" + start[5:]
    fwd, bwd = Image(0x1000, start, recs), Image(0x1000, start, recs, backward=True)
    for t in (0, 11, 21):
        fwd.advance(t), bwd.advance(t)
        assert fwd.read(0x1000, 5) == bwd.read(0x1000, 5)
    assert Image(0x1000, start, recs).uncertain(5, 15, 0x1000) == [recs[0]]


# ---------------------------------------------------------------- sideband and snapshots
def test_text_poke_record_layout():
    rec = TextPokeRecord(tick=1234, cpu=2, addr=0xFFFFFFFF81000007,
                         old=bytes.fromhex("0f1f440000"), new=bytes.fromhex("e908000000"))
    raw = sideband.encode(rec)
    assert raw[:8] == bytes.fromhex("1400000001003800")  # type 20, misc KERNEL, size 56
    assert raw[8:32] == bytes.fromhex("07000081ffffffff05000500" "0f1f440000e908000000" "0000")
    assert raw[32:] == bytes.fromhex("00000000" "00000000" "d204000000000000" "02000000" "00000000")
    assert len(raw) % 8 == 0 and sideband.decode(raw + raw) == [rec, rec]
    with pytest.raises(sideband.SidebandError, match="offset 0x0"):
        sideband.decode(raw[:-3])


def test_kcore_snapshot(tmp_path):
    text = bytes(range(256)) * 16
    blob = kcore.write([(layout.TEXT_BASE, text)])
    assert kcore.read(blob) == [(layout.TEXT_BASE, text)]
    if shutil.which("readelf"):  # binutils' own view of it
        (tmp_path / "t.elf").write_bytes(blob)
        out = subprocess.run(["readelf", "-l", str(tmp_path / "t.elf")], capture_output=True)
        assert b"LOAD" in out.stdout and b"0xffffffff81000000" in out.stdout
    with pytest.raises(kcore.ElfError):
        kcore.read(b"\x7fELF" + bytes(10))


# ---------------------------------------------------------------- bad input
def test_fuzzed_streams_end_in_clear_errors():
    """10,000 mutated streams: the dumper and the decoder end with a value or an error that
    names an offset, never anything else, and never hang (the step bound)."""
    out = Runner(SCENARIOS["z4_bytewise"]).run_seed(0)
    base, flow = out.streams[1], out.flows[1]
    rng = random.Random(7)
    errors = 0
    for i in range(10_000):
        s = bytearray(base)
        op = i % 4
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                s[rng.randrange(len(s))] = rng.randrange(256)
        elif op == 1:
            del s[rng.randrange(len(s)):]
        elif op == 2:
            pos = rng.randrange(len(s))
            s[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            s = bytearray(rng.randbytes(rng.randint(1, 64)))
        try:
            dump(bytes(s))
        except PacketError as e:
            assert 0 <= e.offset <= len(s) and "offset" in str(e)
        res = decode(bytes(s), Image(layout.TEXT_BASE, out.result.text_start, []), len(flow) + 16)
        if res.error is not None:
            errors += 1
            assert isinstance(res.error, PacketError | DecodeError | Ambiguous)
            assert "offset" in str(res.error)
    assert errors > 5000


def test_query_layer_rejects_misplaced_packets():
    bad = Psb().encode() + Tnt((True,)).encode() + PsbEnd().encode()
    with pytest.raises(DecodeError, match="TNT inside PSB"):
        items(bad)
    with pytest.raises(PacketError, match="reserved IPBytes"):
        items(bytes([0xAD]) + bytes(8))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_run_decode_dump(tmp_path):
    assert _cli("run", "kprobe_optimize", "--seed", "1", "--out", str(tmp_path)).returncode == 0
    for name in ("cpu0.pt", "cpu1.pt", "sideband.bin", "text-start.elf", "text-end.elf",
                 "cpu0.truth.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    for args in ([], ["--backward"]):
        out = _cli("decode", str(tmp_path), *args)
        assert out.returncode == 0 and out.stdout.count("exact") == 4, out.stdout
        ref = _cli("decode", str(tmp_path), *args, "--engine", "reference")
        assert ref.stdout == out.stdout  # the fast engine decodes a saved run as the reference
    out = _cli("dump", str(tmp_path / "cpu1.pt"))
    assert out.returncode == 0 and "PSB" in out.stdout and "TIP.PGE" in out.stdout
    stream = (tmp_path / "cpu1.pt").read_bytes()
    cut = next(off for off, p in iter_packets(stream) if off > 200 and isinstance(p, TscPacket))
    (tmp_path / "cpu1.pt").write_bytes(stream[:cut + 3])  # inside a TSC packet
    for cmd in (["dump", str(tmp_path / "cpu1.pt")], ["decode", str(tmp_path)],
                ["decode", str(tmp_path), "--engine", "reference"]):
        out = _cli(*cmd)
        assert out.returncode == 2 and "offset 0x" in out.stderr and "Traceback" not in out.stderr
    out = _cli("decode", str(tmp_path / "nope"))
    assert out.returncode == 2 and "not a run directory" in out.stderr


@settings(max_examples=50)
@given(st.binary(max_size=200))
def test_random_bytes_to_dump_cli_level_function(blob):
    try:
        dump(blob)
    except PacketError as e:
        assert e.offset <= len(blob)


def test_a_candidate_the_packets_allow_stays_and_one_they_contradict_goes():
    """_consistent, which prunes the candidates of an instruction in doubt: decoding on from
    the instruction that really ran (mid-stream, past the sync) is consistent; a candidate
    that jumps out of the image is not. (It once re-ran the start-of-trace sync on its clone,
    met the next TNT there and called every candidate contradicted.)"""
    from harness.trace.pt.decoder import _Walker
    from harness.trace.pt.insn import classify
    from harness.trace.pt.query import items_until_error

    out = Runner(SCENARIOS["static_key"]).run_seed(0)
    res = out.result
    its, _ = items_until_error(out.streams[1])
    walker = _Walker(its, Image(layout.TEXT_BASE, res.text_start, res.sideband), 10**6, [])
    walker.run(200)
    real = walker.image.read(walker.ip)
    assert walker._consistent((real, classify(real)))
    away = b"\xe9" + (-0x100000).to_bytes(4, "little", signed=True)  # jmp out of the text
    assert not walker._consistent((away, classify(away)))
