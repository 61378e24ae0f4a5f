"""A Timeline (harness/timeline.py) drawn with matplotlib's Agg backend, as SVG or PNG.

One lane per CPU over virtual time (ticks). Every drawn element has a stable SVG id
(`set_gid`), so tests and users can find it: `phase-<n>-<kind>`, `store-<cpu>-<n>`,
`record-<n>`, `exec-<cpu>-<site>-<n>-<kind>`, `<what>-<cpu>-<n>` for interrupts, exceptions,
serializations, view updates and IPIs sent, `divergence`. The output is a function of the
timeline alone: fonts, sizes, the SVG hash salt and the metadata are fixed, so the same run
gives the same bytes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .timeline import ExecKind, PhaseKind, Timeline, TimelineError

if TYPE_CHECKING:
    from .run import Outcome

SUFFIXES = (".svg", ".png")
T = TypeVar("T")

PHASE_COLOURS = {PhaseKind.INT3: "#e6550d", PhaseKind.SYNC: "#756bb1",
                 PhaseKind.TAIL: "#3182bd", PhaseKind.RECORD: "#d4a017",
                 PhaseKind.FIRST: "#31a354", PhaseKind.REFS: "#8c564b",
                 PhaseKind.TEXT: "#969696"}
EXEC_COLOURS = {ExecKind.OLD: "#6baed6", ExecKind.INT3: "#fd8d3c", ExecKind.NEW: "#74c476",
                ExecKind.TORN: "#de2d26"}
EXEC_LABELS = {ExecKind.OLD: "old", ExecKind.INT3: "INT3 \u2192 handler", ExecKind.NEW: "new",
               ExecKind.TORN: "torn"}
# a point event: (row in the lane, marker, colour)
MARKS = {"ipi": (0.53, "^", "#54278f"), "nmi": (0.53, "v", "#a50f15"),
         "exception": (0.53, "x", "#e6550d"), "serialize": (0.48, "|", "#252525"),
         "view": (0.58, ".", "#636363"), "send": (0.58, ">", "#54278f")}
MARK_NAMES = {"ipi": "IPI taken", "nmi": "NMI taken", "exception": "exception (#BP, ...)",
              "serialize": "serialization", "view": "fetch-view update", "send": "IPI sent"}

# Fixed settings: the same timeline gives the same bytes on every machine.
RC = {"svg.hashsalt": "textpoke-timeline", "svg.fonttype": "none",
      "font.family": "DejaVu Sans", "font.size": 7, "path.simplify": False,
      "axes.unicode_minus": False}
LANE = 1.0  # a CPU's lane height; rows inside it, bottom to top: sites, events, stores, phases
EXEC_ROWS = (0.04, 0.44)  # the sites' sub-rows share this band
PHASE_ROW = (0.74, 0.84)
STORE_ROW = (0.62, 0.71)


def _numbered(items: Iterable[T], key: Callable[[T], Hashable]) -> Iterator[tuple[int, T]]:
    """Each item with its number among those of the same key: what an element's id says
    (`exec-<cpu>-<site>-<n>-...`), the same on every draw of the same timeline."""
    seen: Counter[Hashable] = Counter()
    for item in items:
        k = key(item)
        yield seen[k], item
        seen[k] += 1


def _suffix(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise TimelineError(f"--out {out}: unknown picture format {out.suffix or '(none)'!r}; "
                            f"use {' or '.join(SUFFIXES)}")
    return suffix[1:]


def check_out(out: Path) -> Path:
    """The picture's path, checked before any work: a known suffix, in an existing directory."""
    _suffix(out)
    if out.is_dir():
        raise TimelineError(f"--out {out}: is a directory")
    if not out.absolute().parent.is_dir():
        raise TimelineError(f"--out {out}: its directory {out.absolute().parent} does not exist")
    return out


def draw(tl: Timeline, out: Path) -> Path:
    """Write the picture of `tl` to `out` (.svg or .png)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    fmt = _suffix(check_out(out))
    with matplotlib.rc_context(RC):
        height = 2.0 + 1.25 * tl.ncpus  # inches: the lanes, 1.4 below them, 0.6 above
        fig = Figure(figsize=(16, height), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.06, 1.4 / height, 0.92, 1 - 2.0 / height))
        span = max(tl.ticks, 1)
        ax.set_xlim(0, span)
        ax.set_ylim(0, tl.ncpus * LANE)
        ax.set_xlabel("virtual time (ticks: instructions retired on any CPU)")
        ax.set_title(tl.title, loc="left", fontsize=9)
        width = span / 1600  # the narrowest mark: about one pixel at this size

        def base(cpu: int) -> float:
            return (tl.ncpus - 1 - cpu) * LANE

        rows = max(len(tl.sites), 1)
        row_h = (EXEC_ROWS[1] - EXEC_ROWS[0]) / rows
        ticks, labels = [], []
        for cpu in range(tl.ncpus):
            y = base(cpu)
            ax.axhline(y, color="#bdbdbd", linewidth=0.6)
            ticks.append(y + PHASE_ROW[0])
            labels.append(f"cpu{cpu}")
            for i, s in enumerate(tl.sites):
                ticks.append(y + EXEC_ROWS[0] + row_h * (i + 0.5))
                labels.append(s.name)
        ax.set_yticks(ticks, labels, fontsize=6)

        for n, p in enumerate(tl.phases):
            y = base(p.cpu)
            r = Rectangle((p.start, y + PHASE_ROW[0]), max(p.end - p.start, width),
                          PHASE_ROW[1] - PHASE_ROW[0], facecolor=PHASE_COLOURS[p.kind],
                          edgecolor="none", alpha=0.85)
            r.set_gid(f"phase-{n}-{p.kind}")
            ax.add_patch(r)
            right = p.start > span * 0.75  # a label near the right edge ends at its phase
            t = ax.text(p.end if right else p.start,
                        y + PHASE_ROW[1] + (0.01 if n % 2 == 0 else 0.08),
                        p.label, fontsize=6, va="bottom", ha="right" if right else "left",
                        color=PHASE_COLOURS[p.kind])
            t.set_gid(f"phase-{n}-{p.kind}-label")

        site_row = {s.name: i for i, s in enumerate(tl.sites)}

        def row(cpu: int, site: str) -> tuple[float, float]:
            """(bottom, height): the site's row in the CPU's lane, or the store row."""
            if site in site_row:
                return base(cpu) + EXEC_ROWS[0] + row_h * site_row[site], row_h
            return base(cpu) + STORE_ROW[0], STORE_ROW[1] - STORE_ROW[0]

        for n, s in _numbered(tl.stores, lambda s: s.cpu):  # per site, in the storer's lane
            y, h = row(s.cpu, s.site)
            r = Rectangle((s.tick, y + h * 0.1), width, h * 0.8,
                          facecolor=PHASE_COLOURS[s.kind], edgecolor="none")
            r.set_gid(f"store-{s.cpu}-{n}")
            ax.add_patch(r)
        for n, rec in enumerate(tl.records):
            y, h = row(rec.cpu, next((s.name for s in tl.sites if rec.addr in s), ""))
            (m,) = ax.plot([rec.tick], [y + h / 2], marker="D",
                           markersize=4, color=PHASE_COLOURS[PhaseKind.RECORD],
                           markeredgecolor="black", markeredgewidth=0.4, linestyle="none")
            m.set_gid(f"record-{n}")

        for n, h in _numbered(tl.handlers, lambda h: h.cpu):  # the #BP until its IRET
            y = base(h.cpu) + EXEC_ROWS[0] + row_h * site_row[h.site]
            r = Rectangle((h.start, y + row_h * 0.3), max(h.end - h.start, width), row_h * 0.4,
                          facecolor=EXEC_COLOURS[ExecKind.INT3], edgecolor="none", alpha=0.35)
            r.set_gid(f"handler-{h.cpu}-{n}")
            ax.add_patch(r)
        for n, e in _numbered(tl.executions, lambda e: (e.cpu, e.site)):
            y = base(e.cpu) + EXEC_ROWS[0] + row_h * site_row[e.site]
            r = Rectangle((e.tick, y + row_h * 0.1), width * (3 if e.kind is ExecKind.TORN
                                                               else 1),
                          row_h * 0.8, facecolor=EXEC_COLOURS[e.kind], edgecolor="none")
            r.set_gid(f"exec-{e.cpu}-{e.site}-{n}-{e.kind}")
            ax.add_patch(r)

        for n, mk in _numbered(tl.marks, lambda mk: (mk.what, mk.cpu)):
            row, marker, colour = MARKS[mk.what]
            (m,) = ax.plot([mk.tick], [base(mk.cpu) + row], marker=marker, markersize=3.5,
                           color=colour, linestyle="none", markeredgewidth=0.6)
            m.set_gid(f"{mk.what}-{mk.cpu}-{n}")

        d = tl.divergence
        if d is not None:
            lo, hi = (0, tl.ncpus * LANE) if d.cpu is None else (base(d.cpu), base(d.cpu) + LANE)
            (line,) = ax.plot([d.tick, d.tick], [lo, hi], color="#cb181d", linewidth=1.6)
            line.set_gid("divergence")
            right = d.tick > span * 0.6
            t = ax.annotate(d.label, (d.tick, hi - 0.05), xytext=(-6 if right else 6, -2),
                            textcoords="offset points", ha="right" if right else "left",
                            va="top", fontsize=7, color="#cb181d",
                            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white",
                                  "edgecolor": "#cb181d", "linewidth": 0.6})
            t.set_gid("divergence-label")

        handles = [Patch(facecolor=PHASE_COLOURS[k], label=k.label) for k in PhaseKind]
        handles += [Patch(facecolor=EXEC_COLOURS[k], label=f"site executed: {EXEC_LABELS[k]}")
                    for k in ExecKind]
        handles += [Patch(facecolor=EXEC_COLOURS[ExecKind.INT3], alpha=0.35,
                          label="in the INT3 handler (#BP until IRET)")]
        handles += [Line2D([], [], marker="D", color=PHASE_COLOURS[PhaseKind.RECORD],
                           linestyle="none", label="text-poke record")]
        handles += [Line2D([], [], marker=MARKS[w][1], color=MARKS[w][2], linestyle="none",
                           label=MARK_NAMES[w]) for w in MARKS]
        if d is not None:
            handles.append(Line2D([], [], color="#cb181d", label="first failure"))
        leg = fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=6.5,
                         frameon=False, bbox_to_anchor=(0.5, 0.35 / height))
        leg.set_gid("legend")
        metadata = {"Date": None, "Creator": "textpoke timeline"} if fmt == "svg" else \
            {"Software": "textpoke timeline"}
        try:
            fig.savefig(out, format=fmt, metadata=metadata)
        except OSError as e:
            raise TimelineError(f"--out {out}: {e.strerror or e}") from None
    return out


PICTURE = "timeline.svg"  # the picture a failing run's --out directory gets


def write_run(out: Outcome, seed: int | None, directory: Path) -> Path | None:
    """A run's artifacts in `directory` (in place of an earlier run's); for a failing run also
    its timeline, `directory/timeline.svg`, whose path is returned (None for a passing run:
    the picture costs a second or so, which explorations and test suites need not pay)."""
    from harness.trace.saved_run import prepare_out

    from .run import write_artifacts
    from .timeline import from_run_dir

    write_artifacts(out, seed, prepare_out(directory))
    if out.ok:
        return None
    return draw(from_run_dir(directory), directory / PICTURE)
