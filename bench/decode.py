"""Decoder benchmark (issues 4 and 15): decoded instructions per second of our PT decoder on
every shipped scenario (one schedule each, all CPUs, forward and backward, decoded and compared
with the flow as `Runner.check` does), under the fast engine (harness/trace/pt/_native.c) and
the reference one on the same bytes, plus the encoder's rate under each.

Usage: python bench/decode.py [--json] [--scenarios NAME,...]
"""

from __future__ import annotations

import argparse
import json
import time

from emu.engine import Engine, native_module
from harness.run import Outcome, Runner
from harness.scenario.shipped import SCENARIOS
from harness.trace import verify

FAST_REPEAT = 5  # the fast engine's figures: the best of this many rounds


def schedule(name: str) -> tuple[Runner, Outcome]:
    """One schedule of a scenario (seed 0), not yet verified."""
    runner = Runner(SCENARIOS[name], decode=False)
    return runner, runner.run_seed(0)


def decode_rate(out: Outcome, engine: Engine) -> tuple[int, float]:
    """(steps decoded in both directions, seconds) of `verify.check` under `engine`."""
    res = out.result
    flows = verify.flows(res.truth, res.final_rips, engine)
    best = float("inf")
    for _ in range(FAST_REPEAT if engine is Engine.FAST else 1):
        steps = 0
        t = time.perf_counter()
        for backward in (False, True):
            rep = verify.check(out.streams, flows, res.text_start, res.text_end, res.sideband,
                               backward, None, False, engine)
            assert rep.verdict is None, rep.verdict
            steps += sum(c.steps for c in rep.cpus)
        best = min(best, time.perf_counter() - t)
    return steps, best


def encode_rate(runner: Runner, out: Outcome, engine: Engine) -> tuple[bytes, float]:
    """(the streams, seconds) of building the flows and encoding them under `engine`."""
    res = out.result
    best = float("inf")
    for _ in range(FAST_REPEAT if engine is Engine.FAST else 1):
        t = time.perf_counter()
        flows = verify.flows(res.truth, res.final_rips, engine)
        streams = verify.encode_all(flows, res.final_rips, runner.trace, engine)
        best = min(best, time.perf_counter() - t)
    return b"".join(streams), best


def stream_rates(stream: bytes, text: bytes, records: list, max_steps: int) -> dict[str, float]:
    """Our decoder alone (no comparison) on one stream, forward over `text` with `records`:
    instructions/s per engine, for columns beside other decoders on the same bytes."""
    from emu import layout
    from harness.trace.pt import native
    from harness.trace.pt.decoder import decode
    from harness.trace.pt.image import Image

    out: dict[str, float] = {}
    t = time.perf_counter()
    ref = decode(stream, Image(layout.TEXT_BASE, text, records), max_steps)
    out["reference"] = len(ref.steps) / (time.perf_counter() - t)
    out["instructions"] = len(ref.steps)
    if native_module("trace"):
        best = float("inf")
        for _ in range(10 * FAST_REPEAT):  # about 0.1 ms a round: the best of many
            t = time.perf_counter()
            fast = native.decode(stream, layout.TEXT_BASE, text, records, False, max_steps,
                                 None)
            best = min(best, time.perf_counter() - t)
        assert fast.steps == len(ref.steps)
        out["fast"] = fast.steps / best
    return out


def our_rows(names: list[str]) -> list[dict]:
    engines = [Engine.FAST, Engine.REFERENCE] if native_module("trace") else [Engine.REFERENCE]
    rows = []
    for name in names:
        runner, out = schedule(name)
        row: dict = {"scenario": name}
        streams = set()
        for engine in engines:
            steps, t_dec = decode_rate(out, engine)
            pt, t_enc = encode_rate(runner, out, engine)
            streams.add(pt)
            row.update({"instructions": steps // 2, "pt_bytes": len(pt),
                        f"decoded_insn_per_s_{engine}": round(steps / t_dec),
                        f"encoded_insn_per_s_{engine}": round(steps / 2 / t_enc)})
        assert len(streams) == 1, f"{name}: the engines encoded different streams"
        rows.append(row)
    return rows


def print_our_rows(rows: list[dict]) -> None:
    def col(r: dict, what: str, engine: str) -> str:
        v = r.get(f"{what}_insn_per_s_{engine}")
        return f"{v / 1e6:9.2f}M" if v else f"{'-':>10}"

    print(f"{'scenario':24} {'insns':>7} {'PT bytes':>9} {'dec fast':>10} {'dec ref':>10} "
          f"{'ratio':>6} {'enc fast':>10} {'enc ref':>10}")
    for r in rows:
        fast, ref = r.get("decoded_insn_per_s_fast"), r["decoded_insn_per_s_reference"]
        ratio = f"{fast / ref:5.0f}x" if fast else f"{'-':>6}"
        print(f"{r['scenario']:24} {r['instructions']:7} {r['pt_bytes']:9} "
              f"{col(r, 'decoded', 'fast')} {col(r, 'decoded', 'reference')} {ratio} "
              f"{col(r, 'encoded', 'fast')} {col(r, 'encoded', 'reference')}")
    total = sum(r["instructions"] for r in rows)
    for engine in ("fast", "reference"):
        if f"decoded_insn_per_s_{engine}" in rows[0]:
            secs = sum(2 * r["instructions"] / r[f"decoded_insn_per_s_{engine}"] for r in rows)
            print(f"all scenarios, {engine}: {2 * total / secs / 1e6:.2f} M instructions/s "
                  "decoded and compared (both directions)")
    print(f"total instructions per direction: {total}")


def libipt_rates(flavour) -> dict[str, float] | str:
    """libipt's decoded instructions per second (harness/trace/libipt.py, pt_insn or pt_blk)
    over every shipped scenario's seed-0 run, forward; a string saying why if it is missing."""
    from emu import layout
    from harness.trace import libipt

    ipt = libipt.load()
    if isinstance(ipt, libipt.LibiptMissing):
        return str(ipt)
    steps, seconds = 0, 0.0
    for scn in SCENARIOS.values():
        runner = Runner(scn, decode=False)
        out = runner.run_seed(0)
        for flow, stream in zip(out.flows, out.streams, strict=True):
            t = time.perf_counter()
            res = libipt.decode(ipt, stream, layout.TEXT_BASE, out.result.text_start,
                                out.result.sideband, len(flow) + 16, flavour)
            seconds += time.perf_counter() - t
            assert res.error is None and len(res.steps) == len(flow), res.error
            steps += len(res.steps)
    return {"instructions": steps, "insn_per_s": round(steps / seconds)}


def libipt_main(as_json: bool) -> None:
    from harness.trace.libipt import Flavour

    rates = {f"libipt_{f.name.lower()}": libipt_rates(f) for f in Flavour}
    if as_json:
        print(json.dumps(rates, indent=2))
        return
    for name, r in rates.items():
        print(f"{name}: " + (r if isinstance(r, str) else
                             f"{r['insn_per_s']} decoded/s over {r['instructions']} insns"))


def libipt_native_rates(stream: bytes, text: bytes, base: int, rounds: int = 20
                        ) -> dict[str, tuple[int, float]] | str:
    """libipt's own speed in C (bench/libipt_rate.c, built here with gcc against
    libipt.so.2) on `stream` over a static image of `text`: per decoder, (instructions
    decoded, instructions/s of the fastest round); a string saying why not."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from harness.trace import libipt

    if not shutil.which("gcc") or isinstance(libipt.load(), libipt.LibiptMissing):
        return "needs gcc and libipt.so.2 (apt-get install libipt2)"
    src = Path(__file__).with_name("libipt_rate.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe, sfile, tfile = Path(tmp) / "rate", Path(tmp) / "stream.pt", Path(tmp) / "text"
        done = subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-l:libipt.so.2"],
                              capture_output=True, text=True)
        if done.returncode:
            return f"could not build {src.name}: {done.stderr.strip()[:200]}"
        sfile.write_bytes(stream)
        tfile.write_bytes(text)
        out = {}
        for flavour in ("insn", "blk"):
            line = subprocess.run([str(exe), flavour, str(sfile), str(tfile), str(len(text)),
                                   str(base), str(rounds)], capture_output=True, text=True,
                                  check=True).stdout.split()
            count, seconds = int(line[0]), float(line[1])
            out[f"libipt pt_{flavour}"] = (count, count / seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--libipt", action="store_true", help="libipt's pt_insn and pt_blk instead")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated shipped scenario names (default: all)")
    args = ap.parse_args()
    if args.libipt:
        libipt_main(args.json)
        return
    rows = our_rows(args.scenarios.split(","))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_our_rows(rows)
    runner, out = schedule("static_key")  # performance.md's stream: cpu1, static image
    rates = stream_rates(out.streams[1], out.result.text_start, [], len(out.flows[1]) + 16)
    print("static_key cpu1 stream, image without records, decode only: " + ", ".join(
        f"{what} {rate / 1e6:.2f} M/s" for what, rate in rates.items() if what != "instructions")
        + f" ({rates['instructions']} instructions)")
    from emu import layout

    theirs = libipt_native_rates(out.streams[1], out.result.text_start, layout.TEXT_BASE)
    if isinstance(theirs, str):
        print(f"libipt: {theirs}")
        return
    ours = rates.get("fast", rates["reference"])
    for what, (count, rate) in theirs.items():
        print(f"  {what} (C, same bytes and image): {rate / 1e6:.2f} M/s ({count} "
              f"instructions); ours / theirs = {ours / rate:.2f}")


if __name__ == "__main__":
    main()
