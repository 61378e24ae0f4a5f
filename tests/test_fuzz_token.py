"""Fuzzing `textpoke replay` (issue 14): 2,000 mutated replay tokens, seeded so that every run
sees the same ones. The seeds are real tokens of short schedules found here (failing and
passing, shrunk, one from the exhaustive explorer in event mode); the mutations edit the text
(outside and inside the base64) and, re-encoded with a correct checksum, the JSON and its
decision path. Whatever the edit: no traceback, no exit 3 and no exit 1 for a crash; a path
cut short or grown is refused (exit 2) naming the decision where it parts from the run, as is
a decision of another kind or arity; a value changed within its arity may replay (another
schedule), and then the replay reports exactly the path's decisions."""

from __future__ import annotations

import base64
import contextlib
import enum
import io
import json
import random
import re
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from emu.decisions import RandomSource, ReplaySource, SimplestSource
from emu.path import simplest
from harness.cli import main
from harness.explore.explore import explore
from harness.explore.schedule import Plan, make_token, run_schedule, runner_for
from harness.explore.token import Token, TokenError

TOKENS = 2000
FIELDS = ("s", "v", "c", "g", "seed", "t", "e", "p")
LETTERS = "cqvinrf"  # emu/path.py's kind letters
ITEM = re.compile(r"([a-z])([0-9]{1,9})\.([0-9]{1,9})")


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `textpoke ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code
    # the notice of an engine running partly as the reference (no compiler here) is no error
    said = "".join(line for line in err.getvalue().splitlines(keepends=True)
                   if not line.startswith("textpoke: engine:"))
    return rc, out.getvalue(), said


# --- the seeds ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    name: str
    token: str
    doc: dict  # the token's JSON
    rc: int  # what `textpoke replay` of the token itself exits with (0 or 1)
    out: str  # and prints (scenario, verdict, decisions)


def unpack(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def pack(raw: bytes, compress: bool = True) -> str:
    """A token with a correct checksum around `raw` (JSON text, or anything)."""
    data = zlib.compress(raw, 9) if compress else raw
    return f"tp2.{base64.urlsafe_b64encode(data).decode().rstrip('=')}.{zlib.crc32(data):08x}"


def _failing(scenario: str, variant: str) -> tuple[str, str]:
    for i in range(20):
        r = run_schedule(Plan(scenario, variant, shrink=True, shrink_budget=20), i)
        if r.failed:
            return r.token, r.shrunk
    raise AssertionError(f"{scenario} [{variant}]: no failure in 20 schedules")


def _passing(scenario: str, variant: str, event_mode: bool = False,
             seed: int | None = None) -> str:
    """A passing schedule's token: a random one (`seed`) or the simplest run."""
    runner = runner_for(scenario, variant, None, None, event_mode)
    out = runner.run(SimplestSource() if seed is None else RandomSource(seed))
    assert out.ok, out.verdict
    return make_token(runner, out.result.path, seed)


@pytest.fixture(scope="module")
def seeds() -> list[Seed]:
    return find_seeds()


def find_seeds() -> list[Seed]:
    """Real tokens of a few short schedules, found here (no token is written down)."""
    tokens = {}
    tokens["z4 buggy"], tokens["z4 buggy shrunk"] = _failing("z4_bytewise", "buggy")
    tokens["z3 buggy"], tokens["z3 buggy shrunk"] = _failing("z3_call_emulation", "buggy")
    tokens["z4 fixed"] = _passing("z4_bytewise", "fixed", seed=0)
    found = explore(Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1,
                         delays=0, interrupts=0, shrink=False), stop_at_first=True)
    tokens["z4 buggy exhaustive"] = next(r.token for r in found.results if r.failed)
    tokens["z4 fixed event mode"] = _passing("z4_bytewise", "fixed", event_mode=True)
    out = []
    for name, token in tokens.items():
        rc, stdout, err = run_cli("replay", token)
        doc = unpack(token)
        assert rc in (0, 1) and not err, (name, rc, err)
        assert f"({len(doc['p'].split(','))} decisions)" in stdout
        out.append(Seed(name, token, doc, rc, stdout))
    assert {s.rc for s in out} == {0, 1} and any(s.doc["e"] for s in out)
    return out



# --- what a mutated token must do -----------------------------------------------------------

class Expect(enum.Enum):
    REFUSED = "refused"  # exit 2 (naming `position`, if one is given)
    SAME = "same"  # the seed's own schedule: the seed's exit code
    SAME_OR_REFUSED = "same or refused"  # a text edit: refused, or harmless (whitespace...)
    ANY = "any"  # another schedule: 0, 1 or 2


@dataclass
class Case:
    what: str  # for the report: which mutation, where
    token: str
    expect: Expect
    position: int | None = None  # REFUSED at this decision: stderr says "decision N:"
    truncated: bool = False  # the path is a strict prefix (or extension) of the seed's
    decisions: int | None = None  # if replayed: exactly this many decisions


def parse_item(item: str) -> tuple[str, int, int] | None:
    """One path item as the codec's spec reads it (kind letter, arity >= 2 of at most nine
    digits, '.', a value below the arity of at most nine digits), or None if malformed."""
    m = ITEM.fullmatch(item)
    if not m or m[1] not in LETTERS or int(m[2]) < 2 or int(m[3]) >= int(m[2]):
        return None
    return m[1], int(m[2]), int(m[3])


def classify_path(seed: Seed, text: str, what: str) -> Case:
    """What the seed's token with path `text` must do, from the seed's path alone: refused at
    the first malformed item, or where it parts from the seed's (its end, or a decision of
    another kind or arity); the same schedule if equal; any exit if a value changed first."""
    old = [parse_item(x) for x in seed.doc["p"].split(",")]
    new = []
    for i, item in enumerate(text.split(",") if text else []):
        parsed = parse_item(item)
        if parsed is None:
            return Case(what, "", Expect.REFUSED, i)
        new.append(parsed)
    n = len(new)
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a[:2] != b[:2]:
            return Case(what, "", Expect.REFUSED, i)
        if a[2] != b[2]:
            return Case(what, "", Expect.ANY, decisions=n)
    if n == len(old):
        return Case(what, "", Expect.SAME, decisions=n)
    return Case(what, "", Expect.REFUSED, min(n, len(old)), truncated=True)


# --- mutations ------------------------------------------------------------------------------

HUGE = [2**31, 2**63, 2**64, 2**70, -(2**63), 10**30]
VALUES = [None, True, False, 0, 1, -1, 2, 3, 4, 64, 65, 1.0, 2.0, 1.5, -0.0, 1e308, *HUGE, "",
          "0", "4", "x", "z4_bytewise", "fixed", "buggy", "correct", "\u00e9\u4e2d\U0001f600",
          "\x00", "a" * 201, "0123456789abcdef", [], [1], [1, 4096, 1], [1, 4096], [[[[]]]],
          {}, {"s": "z4_bytewise"}, "c4.1", " ", "tp2", float("inf")]


def _other_item(rng: random.Random, like: tuple[str, int, int] | None) -> str:
    """A path item: well formed or not, often close to `like`."""
    k, a, v = like or ("c", 2, 0)
    return rng.choice([
        f"{rng.choice(LETTERS)}{rng.randint(2, 20)}.{rng.randrange(2)}",
        f"{k}{a}.{rng.randrange(a)}", f"{k}{a}.{a}", f"{k}{a + 1}.{v}", f"{k}1.0", f"{k}0.0",
        f"{k.upper()}{a}.{v}", f"x{a}.{v}", f"{k}{a}", f"{k}.{v}", f"{k}{a}.", f"{k}{a}.{v}.0",
        f"{k}-{a}.{v}", f"{k}{a}.-{v}", f" {k}{a}.{v}", f"{k}{a}.{v} ", f"{k}{'9' * 10}.{v}",
        f"{k}999999999.{v}", f"{k}{a}.{'0' * 10}", f"{k}\uff14.{v}", f"{k}\u0664.0", "",
        f"{k}{a}.{v}" * 2, f"{k}0{a}.00{v}", f"{k}+{a}.{v}", f"{k}{a}.{v}\n", "\u00e9"])


def mutate_path(rng: random.Random, seed: Seed, seeds: list[Seed]) -> Case:
    items = seed.doc["p"].split(",")
    n = len(items)
    parsed = [parse_item(x) for x in items]
    op = rng.randrange(12)
    i = rng.randrange(n)
    if op in (0, 1):  # cut anywhere (op 1: near the end, where a lenient replay hides it)
        k = rng.randrange(n) if op == 0 else max(0, n - rng.randint(1, 3))
        new, what = items[:k], f"path cut to {k} of {n}"
    elif op == 2:  # grown at the end
        extra = [rng.choice([items[-1], f"c2.{rng.randrange(2)}",
                             _other_item(rng, parsed[-1])]) for _ in range(rng.randint(1, 4))]
        new, what = items + extra, f"path grown by {extra}"
    elif op == 3:  # a value changed within its arity
        k, a, v = parsed[i]
        w = rng.choice([x for x in range(a) if x != v])
        new, what = [*items[:i], f"{k}{a}.{w}", *items[i + 1:]], f"decision {i}: value {w}"
    elif op == 4:  # the kind, the arity or the value changed to anything
        k, a, v = parsed[i]
        arity = rng.choice([x for x in (2, 3, 4, 16, a + 1, a - 1, 10**8) if x != a])
        item = rng.choice([f"{rng.choice(LETTERS.replace(k, ''))}{a}.{v}", f"{k}{arity}.{v}",
                           f"{k}{a}.{rng.choice([a, a + 1, 10**9 - 1])}"])
        new, what = [*items[:i], item, *items[i + 1:]], f"decision {i}: {items[i]} -> {item}"
    elif op == 5:  # two decisions swapped
        j = rng.randrange(n)
        new = list(items)
        new[i], new[j] = new[j], new[i]
        what = f"decisions {i} and {j} swapped"
    elif op == 6:  # a decision deleted or doubled
        new = items[:i] + items[i + 1:] if rng.random() < 0.5 else items[:i + 1] + items[i:]
        what = f"decision {i} {'deleted' if len(new) < n else 'doubled'}"
    elif op == 7:  # a garbage item put in
        item = _other_item(rng, parsed[i])
        new, what = [*items[:i], item, *items[i:]], f"{item!r} inserted at {i}"
    elif op == 8:  # a garbage item put in place of one
        item = _other_item(rng, parsed[i])
        new, what = [*items[:i], item, *items[i + 1:]], f"decision {i} -> {item!r}"
    elif op == 9:  # a run of decisions reversed, or shuffled
        j = min(n, i + rng.randint(2, 6))
        part = items[i:j]
        rng.shuffle(part)
        new, what = [*items[:i], *part, *items[j:]], f"decisions {i}..{j - 1} shuffled"
    elif op == 10:  # another seed's path, or a piece of it
        other = rng.choice(seeds).doc["p"].split(",")
        new = other[:rng.randint(0, len(other))] if rng.random() < 0.3 else other
        what = f"another path ({len(new)} decisions)"
    else:  # the separators damaged
        text = ",".join(items)
        commas = [m.start() for m in re.finditer(",", text)] or [0]
        c = rng.choice(commas)
        sep = rng.choice([",,", ";", " ,", ", ", "", ".", ",\u00a0"])
        text = rng.choice([text[:c] + sep + text[c + 1:], "," + text, text + ",", text + " "])
        case = classify_path(seed, text, f"separators damaged ({sep!r})")
        case.token = _with(seed, p=text)
        return case
    text = ",".join(new)
    case = classify_path(seed, text, what)
    case.token = _with(seed, p=text)
    return case


def _with(base: Seed, /, **fields) -> str:
    """The seed's token with these JSON fields replaced, checksum and all."""
    doc = {**base.doc, **fields}
    return pack(json.dumps(doc, separators=(",", ":")).encode())


def _same(a: object, b: object) -> bool:
    return json.dumps(a) == json.dumps(b) and type(a) is type(b)


def mutate_fields(rng: random.Random, seed: Seed) -> Case:
    doc = seed.doc
    op = rng.randrange(8)
    key = rng.choice([k for k in FIELDS if k != "p"])
    if op <= 2:  # a field replaced by any value
        value = rng.choice(VALUES + [doc[key]] * 2 + _near(doc[key]))
        what = f"{key} = {json.dumps(value)[:40]}"
        if _same(value, doc[key]):
            return Case(what, _with(seed, **{key: value}), Expect.SAME)
        if key == "seed" and (value is None or type(value) is int and 0 <= value < 2**63):
            return Case(what, _with(seed, **{key: value}), Expect.SAME)  # seeds replay nothing
        return Case(what, _with(seed, **{key: value}), Expect.REFUSED)
    if op == 3:  # the path replaced by another type
        value = rng.choice([v for v in VALUES if not isinstance(v, str)])
        return Case(f"p = {json.dumps(value)[:40]}", _with(seed, p=value), Expect.REFUSED)
    if op == 4:  # a key missing, or one too many
        d = dict(doc)
        if rng.random() < 0.5:
            del d[rng.choice(FIELDS)]
            what = "a key missing"
        else:
            d[rng.choice(["x", "S", "", "seed ", "p2", "\u00e9"])] = rng.choice(VALUES)
            what = "a key too many"
        return Case(what, pack(json.dumps(d).encode()), Expect.REFUSED)
    if op == 5:  # the JSON is not an object
        value = rng.choice([[doc], list(doc.values()), None, 0, "s", [], 1.5, True])
        return Case(f"the JSON is {json.dumps(value)[:30]}", pack(json.dumps(value).encode()),
                    Expect.REFUSED)
    if op == 6:  # the same fields written otherwise: keys reordered, spaces, ensure_ascii
        keys = list(doc)
        rng.shuffle(keys)
        raw = json.dumps({k: doc[k] for k in keys}, indent=rng.choice([None, 0, 2])).encode()
        return Case("the JSON rewritten", pack(b" \n" + raw + b"\t"), Expect.SAME)
    # checksum-valid data that is not (our) JSON, or not zlib
    raw = json.dumps(doc, separators=(",", ":")).encode()
    bad = lambda **f: json.dumps({**doc, **f}).encode()  # noqa: E731 - NaN, Infinity
    data, compress, expect = rng.choice([
        (raw[:rng.randrange(len(raw))], True, Expect.REFUSED), (raw + b"}", True, Expect.REFUSED),
        (b"[" * 100_000, True, Expect.REFUSED), (b'{"s":' * 50_000, True, Expect.REFUSED),
        (bad(c=float("nan")), True, Expect.REFUSED), (bad(e=float("inf")), True, Expect.REFUSED),
        (bad(seed=float("-inf")), True, Expect.REFUSED), (b"9" * 5000, True, Expect.REFUSED),
        (raw.replace(b'"s":"', b'"s":"\xff', 1), True, Expect.REFUSED),
        (b"", True, Expect.REFUSED), (b"\x00" * 8, True, Expect.REFUSED),
        (raw, False, Expect.REFUSED), (zlib.compress(raw)[:-3], False, Expect.REFUSED),
        (rng.randbytes(20), False, Expect.REFUSED),
        (b" " * (1 << 24) + raw, True, Expect.REFUSED),  # a zip bomb's first megabytes
        (zlib.compress(raw) + b"\x00", False, Expect.REFUSED),  # data after the stream
        (raw.replace(b'"e":', b'"e":7,"e":', 1), True, Expect.SAME)])  # JSON keeps the last
    return Case(f"payload {data[:12]!r}... ({'zlib' if compress else 'raw'})",
                pack(data, compress), expect)


def _near(value: object) -> list[object]:
    """Values that a hand edit of this field would make: off by one, another type."""
    if type(value) is int:
        return [value + 1, value - 1, float(value), str(value), [value], -value]
    if isinstance(value, str):
        return [value.upper(), value + " ", value[:-1], value + "\u0301", [value], value * 2]
    if isinstance(value, list):
        return [value[:-1], [*value, 0], [float(x) for x in value], [str(x) for x in value],
                [value[0] + 1, *value[1:]], [value[0], value[1] * 2, value[2]],
                [value[0], value[1], 1 - value[2]], [value[0], value[1], bool(value[2])]]
    return [0, 1]


BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ODD = "+/=.!\u00e9 \n\t\x00\ufeff\u2028\U0001f600"


def mutate_text(rng: random.Random, seed: Seed) -> Case:
    """An edit of the text: in the version, the base64 or the checksum, or around them."""
    t = seed.token
    first, second = t.index("."), t.rindex(".")
    where = rng.choice([(0, first), (first + 1, second), (second + 1, len(t)), (0, len(t))])
    k = rng.randrange(*where) if where[1] > where[0] else where[0]
    ch = rng.choice([rng.choice(BASE64), rng.choice(ODD), rng.choice("0123456789abcdefABCDEF")])
    op = rng.randrange(9)
    if op == 0:
        new, what = t[:k] + ch + t[k + 1:], f"{t[k]!r} at {k} -> {ch!r}"
    elif op == 1:
        new, what = t[:k] + ch + t[k:], f"{ch!r} inserted at {k}"
    elif op == 2:
        n = rng.randint(1, 8)
        new, what = t[:k] + t[k + n:], f"{n} chars deleted at {k}"
    elif op == 3:
        new, what = t[:k], f"cut at {k}"
    elif op == 4:
        new, what = t[:k] + t[k].swapcase() + t[k + 1:], f"case of {k} changed"
    elif op == 5:
        ws = rng.choice([" ", "\n", "\r\n  ", "\t"])
        return Case(f"{ws!r} at {k}", t[:k] + ws + t[k:], Expect.SAME)
    elif op == 6:
        new, what = rng.choice([(t + t, "twice"), (t + ".", "dot appended"),
                                (t.replace(".", "", 1), "dot removed"),
                                (t.replace(".", "..", 1), "dot doubled"),
                                ("tp3" + t[3:], "version tp3"), ("TP2" + t[3:], "version TP2"),
                                (t[:second] + "." + t[second + 1:].upper(), "checksum upper"),
                                (t[:second] + ".0x" + t[second + 1:], "checksum 0x"),
                                (t[:second] + "." + t[second + 2:], "checksum short"),
                                ("", "empty"), (" ", "blank"), ("--" + t, "as an option"),
                                ("-" + t[1:], "leading dash"), (t + "=" * 2, "padding added")])
    elif op == 7:
        b = bytearray(base64.urlsafe_b64decode(t[first + 1:second] + "=="[: -len(
            t[first + 1:second]) % 4]))
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        body = base64.urlsafe_b64encode(bytes(b)).decode().rstrip("=")
        new, what = t[:first + 1] + body + t[second:], "a bit of the data flipped"
    else:
        new, what = t[:k] + rng.choice(BASE64) * rng.randint(1, 30) + t[k:], f"run at {k}"
    return Case(what, new, Expect.SAME_OR_REFUSED)


def mutate(rng: random.Random, seeds: list[Seed]) -> tuple[Seed, Case]:
    seed = rng.choice(seeds)
    family = rng.random()
    if family < 0.5:
        return seed, mutate_path(rng, seed, seeds)
    if family < 0.75:
        return seed, mutate_fields(rng, seed)
    return seed, mutate_text(rng, seed)


# --- the fuzz -------------------------------------------------------------------------------

def same_text(a: str, b: str) -> bool:
    """Whether two texts are one token as written: equal but for whitespace (a wrapped copy)
    and the case of the checksum's hex digits."""
    (a_data, _, a_crc), (b_data, _, b_crc) = ("".join(t.split()).rpartition(".") for t in (a, b))
    return a_data == b_data and a_crc.lower() == b_crc.lower()


def check(seed: Seed, case: Case, rc: object, out: str, err: str) -> str | None:
    """What is wrong with `textpoke replay` of the case exiting `rc`, if anything."""
    if rc not in (0, 1, 2) or "Traceback" in err:
        return f"exit {rc}: {err[-600:]}"
    if rc == 2:
        if not re.search(r"^textpoke( replay)?: error: ", err, re.M) or out:  # argparse's too
            return f"exit 2 without a message: {err!r}"
        if case.expect is Expect.SAME:
            return f"refused, but it is the seed's own schedule: {err.strip()}"
        if case.position is not None and f"decision {case.position}:" not in err:
            return f"refused without naming decision {case.position}: {err.strip()}"
        return None
    if case.truncated:
        return f"accepted a truncated or extended path (exit {rc})"
    if case.expect is Expect.REFUSED:
        return f"accepted (exit {rc}), expected a refusal"
    if case.expect is not Expect.ANY and (rc, out) != (seed.rc, seed.out):
        return f"exit {rc} ({out.strip()}), but the seed's own schedule: {seed.out.strip()}"
    if case.expect is Expect.SAME_OR_REFUSED and not same_text(case.token, seed.token):
        return f"a damaged text was read (exit {rc}): {case.token[:60]!r}..."
    if case.decisions is not None and f"({case.decisions} decisions)" not in out:
        return f"replayed, but not exactly the path's {case.decisions} decisions: {out!r}"
    return None


def fuzz(seeds: list[Seed], cases: int, seed: int,
         mutation: Callable[[random.Random, list[Seed]], tuple[Seed, Case]] = mutate,
         out_dir: Path | None = None) -> dict[str, dict]:
    """Run `cases` mutated tokens; fail with every case that crashed or was accepted wrongly.
    Every tenth replays with `--out out_dir`. Returns
    how often each exit code came, per expectation."""
    codes: dict[str, dict] = {}
    bad: list[str] = []
    for n in range(cases):
        rng = random.Random(seed * 1_000_003 + n)
        s, case = mutation(rng, seeds)
        save = ["--out", str(out_dir)] if out_dir and n % 10 == 0 else []
        if save and out_dir.exists():
            shutil.rmtree(out_dir)
        rc, out, err = run_cli("replay", case.token, *save)
        # a failing replay's --out also gets its timeline, and the report names it
        out, pictured = re.subn(r"\n  timeline: \S+timeline\.svg", "", out) if save else (out, 0)
        tally = codes.setdefault(case.expect.value + (" (truncated)" if case.truncated else ""),
                                 {})
        tally[rc] = tally.get(rc, 0) + 1
        wrong = check(s, case, rc, out, err)
        if save and not wrong and rc != 2 and not (out_dir / "cpu0.pt").is_file():
            wrong = f"replayed with --out, but {out_dir} has no trace"
        if save and not wrong and pictured != (rc == 1):
            wrong = f"replayed with --out, exit {rc}, but {pictured} timeline pictures named"
        if wrong:
            bad.append(f"case {n} ({s.name}: {case.what}): {wrong}")
    assert not bad, f"{len(bad)} of {cases} cases:\n" + "\n".join(bad[:10])
    return codes


def test_fuzz_mutated_tokens(seeds, tmp_path):
    start = time.perf_counter()
    codes = fuzz(seeds, TOKENS, 1, out_dir=tmp_path / "replayed")
    seconds = time.perf_counter() - start
    print(f"\n{TOKENS} tokens in {seconds:.1f} s: {codes}")
    assert sum(sum(c.values()) for c in codes.values()) == TOKENS
    # every kind of case came, and the replays that run are a real share of them
    assert set(codes) == {"refused", "refused (truncated)", "same", "same or refused", "any"}
    assert codes["refused (truncated)"].get(2, 0) >= 200
    assert sum(codes["any"].get(rc, 0) for rc in (0, 1)) >= 50, codes["any"]
    assert seconds < 60


# --- the oracle fails on purpose ------------------------------------------------------------

def _cut_or_grown(rng: random.Random, seeds: list[Seed]) -> tuple[Seed, Case]:
    """The last few decisions of a seed's path cut, or a few simplest-looking ones added."""
    seed = seeds[rng.randrange(len(seeds))]
    items = seed.doc["p"].split(",")
    k = len(items) - 1 - rng.randrange(3)
    text = ",".join(items[:k] if rng.random() < 0.5 else items + items[k:])
    case = classify_path(seed, text, f"{len(text.split(','))} of {len(items)} decisions")
    case.token = _with(seed, p=text)
    assert case.truncated
    return seed, case


def test_the_fuzz_oracle_catches_an_accepted_truncation(seeds, monkeypatch):
    """A replay that continued a short path with the simplest choices (as replay did before
    issue 14's exact ReplaySource) is reported, as is one that ignored what was left over."""

    class Lenient(ReplaySource):
        def pick(self, request, position):
            if position >= len(self.path):
                return simplest(request)
            return super().pick(request, position)

        def close(self, length):
            pass

    assert not fuzz(seeds, 6, 3, _cut_or_grown)["refused (truncated)"].keys() - {2}
    monkeypatch.setattr("harness.explore.explore.ReplaySource", Lenient)
    with pytest.raises(AssertionError, match=r"(?s)6 of 6 cases:.*accepted a truncated"):
        fuzz(seeds, 6, 3, _cut_or_grown)


def test_the_fuzz_oracle_catches_a_refusal_at_the_wrong_decision(seeds, monkeypatch):
    """A replay that refused a cut path but named the decision after the one it lacks."""
    from emu.decisions import ReplayError

    class OffByOne(ReplaySource):
        def pick(self, request, position):
            if position >= len(self.path):
                raise ReplayError(position + 1, "the path ended")
            return super().pick(request, position)

    text = seeds[0].doc["p"].rpartition(",")[0]
    cut = classify_path(seeds[0], text, "the last decision cut")
    cut.token = _with(seeds[0], p=text)
    assert fuzz(seeds, 1, 3, lambda rng, seeds: (seeds[0], cut))["refused (truncated)"] == {2: 1}
    monkeypatch.setattr("harness.explore.explore.ReplaySource", OffByOne)
    with pytest.raises(AssertionError, match="refused without naming decision"):
        fuzz(seeds, 1, 3, lambda rng, seeds: (seeds[0], cut))


def test_the_fuzz_oracle_catches_a_replay_that_wrote_nothing(seeds, tmp_path, monkeypatch):
    own = lambda rng, seeds: (seeds[0], Case("itself", seeds[0].token, Expect.SAME))  # noqa: E731
    assert fuzz(seeds, 1, 3, own, tmp_path / "out") == {"same": {seeds[0].rc: 1}}
    monkeypatch.setattr("harness.cli._write_out", lambda *a: None)
    with pytest.raises(AssertionError, match="has no trace"):
        fuzz(seeds, 1, 3, own, tmp_path / "out")


def test_the_fuzz_oracle_catches_a_crash(seeds, monkeypatch):
    def crash(*a, **k):
        raise IndexError("a harness bug")

    monkeypatch.setattr("harness.explore.explore.replay", crash)
    with pytest.raises(AssertionError, match=r"(?s)exit 3: .*IndexError: a harness bug"):
        fuzz(seeds, 3, 3, _cut_or_grown)


def test_the_fuzz_oracle_catches_a_lenient_field(seeds, monkeypatch):
    """A decoder that took a negative seed (or any value it should refuse) is reported."""
    real = Token._from_doc.__func__

    def lenient(cls, doc):
        if isinstance(doc, dict) and doc.get("seed") == -1:
            doc = {**doc, "seed": None}
        return real(cls, doc)

    monkeypatch.setattr(Token, "_from_doc", classmethod(lenient))
    one = lambda rng, seeds: (seeds[0], Case("seed -1", _with(seeds[0], seed=-1),  # noqa: E731
                                             Expect.REFUSED))
    with pytest.raises(AssertionError, match="expected a refusal"):
        fuzz(seeds, 1, 3, one)


def test_the_classifier_reads_the_codec_as_specified(seeds):
    """classify_path is the oracle for every path edit: check it against decode_path."""
    s = seeds[0]
    items = s.doc["p"].split(",")
    assert classify_path(s, s.doc["p"], "").expect is Expect.SAME
    cut = classify_path(s, ",".join(items[:5]), "")
    assert (cut.expect, cut.position, cut.truncated) == (Expect.REFUSED, 5, True)
    grown = classify_path(s, s.doc["p"] + ",c2.0", "")
    assert (grown.expect, grown.position, grown.truncated) == (Expect.REFUSED, len(items), True)
    assert classify_path(s, "c2.0,c1.0", "").position == 1
    assert classify_path(s, "c2.0,c4.00000000001", "").position == 1
    with pytest.raises(TokenError, match="decision 1"):
        Token.decode(_with(s, p="c2.0,c4.00000000001"))


@pytest.mark.parametrize("damage,msg", [
    (lambda t, raw: t[:20] + "!" * 4 + t[20:], "not base64url"),  # b64decode used to drop it
    (lambda t, raw: t[:20] + "\x00\x00" + t[20:22] + "\x00\x00" + t[22:], "not base64url"),
    (lambda t, raw: t[:20] + "+/" + t[20:], "not base64url"),  # base64, not base64url
    (lambda t, raw: pack(zlib.compress(raw) + b"\0", compress=False), "after its zlib stream"),
    (lambda t, raw: pack(b" " * (1 << 24) + raw), "inflates to more than"),
])
def test_damage_the_fuzz_found_is_refused(seeds, damage, msg):
    """Each was read as the seed's token before the fix (the fuzz saw exit 0 or 1)."""
    token = seeds[0].token
    raw = json.dumps(seeds[0].doc).encode()
    assert Token.decode(pack(raw)) == Token.decode(token)  # the damage alone is refused
    with pytest.raises(TokenError, match=msg):
        Token.decode(damage(token, raw))
