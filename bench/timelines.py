"""The README's timeline pictures: a failing Z2 run (its buggy variant, from the decisions
tests/data/repros.json records) and a passing static_key run (seed 1), drawn into docs/ as
`textpoke timeline` draws them. The same code gives the same bytes.

Usage: python bench/timelines.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from emu.decisions import RandomSource, ReplaySource
from emu.path import decode_path
from harness.run import Runner, write_artifacts
from harness.scenario.shipped import SCENARIOS
from harness.timeline import from_run_dir
from harness.timeline_draw import draw

ROOT = Path(__file__).resolve().parent.parent
REPROS = json.loads((ROOT / "tests" / "data" / "repros.json").read_text())


def main() -> None:
    (ROOT / "docs").mkdir(exist_ok=True)
    z2 = REPROS["z2_handler_vs_teardown/buggy"]
    runs = [("timeline-z2-buggy.svg", "z2_handler_vs_teardown", "buggy",
             ReplaySource(decode_path(z2["path"])), None),
            ("timeline-static_key.svg", "static_key", None, RandomSource(1), 1)]
    for name, scenario, variant, source, seed in runs:
        out = Runner(SCENARIOS[scenario], variant).run(source)
        with tempfile.TemporaryDirectory() as tmp:
            write_artifacts(out, seed, Path(tmp))
            picture = draw(from_run_dir(Path(tmp)), ROOT / "docs" / name)
        print(f"{picture.relative_to(ROOT)}: {scenario} [{out.built.variant}]: {out.verdict}")


if __name__ == "__main__":
    main()
