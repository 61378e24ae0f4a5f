"""`perf script` as an external decoder: run it on a run's perf.data and vmlinux
(harness/trace/perf_data.py) and read back, per CPU, the instructions it decoded and the
trace errors it reported (`--itrace=i0nse`: every instruction, and errors as lines of their
own, tools/perf/util/intel-pt.c: intel_pt_synth_error)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# `-F cpu,ip,insn`: "[001]  ffffffff81000d25 insn: 48 83 e4 f0"
_INSN = re.compile(r"\s*\[(\d+)\]\s+([0-9a-f]+)\s+insn:((?: [0-9a-f]{2})*)\s*$")
# " instruction trace error type 1 time 0.000000120 cpu 2 pid 0 tid 0 ip 0xffffffff... code 6:
#   Trace doesn't match instruction"
_ERROR = re.compile(r"\s*instruction trace error type \d+(?: time [0-9.]+)? cpu (-?\d+) .*?"
                    r"ip (0x[0-9a-f]+) code (\d+): (.*)$")
TIMEOUT = 120  # seconds; perf decodes a run in well under one


class PerfMissing(Exception):
    """perf is not installed (or not runnable): nothing to decode with."""


class PerfFailed(Exception):
    """perf ran and failed (a crash, or a file it refused): an external decoder's error."""

    def __init__(self, returncode: int, last: list[str]) -> None:
        what = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
        super().__init__(f"perf script: {what}" + (f": {last[0]}" if last else ""))
        self.returncode = returncode


@dataclass(frozen=True)
class PerfError:
    """A trace error perf reported: where it was and what it said."""

    ip: int
    code: int
    message: str


@dataclass
class PerfCpu:
    """One CPU's decoding by perf: the instructions (ip, bytes), in order, and its errors, each
    with the number of instructions decoded before it."""

    insns: list[tuple[int, bytes]] = field(default_factory=list)
    errors: list[tuple[int, PerfError]] = field(default_factory=list)


def perf_path() -> str | None:
    return shutil.which("perf")


def parse(text: str, ncpus: int) -> list[PerfCpu]:
    """`perf script -F cpu,ip,insn --itrace=i0nse` output, per CPU."""
    out = [PerfCpu() for _ in range(ncpus)]
    for line in text.splitlines():
        m = _INSN.match(line)
        if m:
            cpu = int(m.group(1))
            if cpu < ncpus:
                out[cpu].insns.append((int(m.group(2), 16), bytes.fromhex(m.group(3))))
            continue
        m = _ERROR.match(line)
        if m and 0 <= int(m.group(1)) < ncpus:
            c = out[int(m.group(1))]
            c.errors.append((len(c.insns), PerfError(int(m.group(2), 16), int(m.group(3)),
                                                     m.group(4).strip())))
    return out


def decode(perf_data: Path, vmlinux: Path, ncpus: int) -> list[PerfCpu]:
    """Run `perf script` on the file; PerfMissing if there is no perf to run. perf reads
    `./vmlinux` and ~/.debug too, so it runs in the file's directory with HOME there and
    `--vmlinux` given: nothing outside the run directory decides what it decodes."""
    perf = perf_path()
    if perf is None:
        raise PerfMissing("perf is not installed (Debian: apt-get install linux-perf)")
    cmd = [perf, "script", "-i", str(perf_data.absolute()), "--vmlinux",
           str(vmlinux.absolute()), "--itrace=i0nse", "-F", "cpu,ip,insn", "--ns"]
    env = {**os.environ, "HOME": str(perf_data.absolute().parent), "PAGER": "cat"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                              cwd=perf_data.absolute().parent, env=env, check=False)
    except OSError as e:
        raise PerfMissing(f"perf could not be run: {e}") from None
    if done.returncode != 0:
        raise PerfFailed(done.returncode, done.stderr.strip().splitlines()[-1:])
    return parse(done.stdout, ncpus)
