"""A user's scenarios, from their own Python file or module.

A scenario is named on the command line as `NAME` (shipped, or from a `--scenarios FILE`),
`path/to/file.py::NAME` or `pkg.mod::NAME`. The scenarios of a file or module are its
module-level `Scenario` objects and those inside its module-level lists, tuples and dicts, by
their `name`. Where a scenario came from (`Origin`) goes into the exploration's Plan, so that
--jobs workers load the same one, and into its replay tokens, so that `textpoke replay TOKEN`
finds it again: for a scenario defined in a pytest file, that file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import mutation
from .scenario import Scenario
from .shipped import SCENARIOS, get
from .text_poke_loc import ScenarioError

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Origin:
    """Where a user's scenario is defined: a Python file (absolute path) or a module name."""

    file: str | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.module is None):
            raise ValueError("an Origin is a file or a module, exactly one")
        if self.file is not None and not Path(self.file).is_absolute():
            raise ValueError(f"{self.file!r} is not an absolute path")
        if self.module is not None and not _MODULE.fullmatch(self.module):
            raise ValueError(f"{self.module!r} is not a module name")

    def encode(self) -> str:
        """The text a replay token and a saved exploration carry."""
        return f"file:{self.file}" if self.file is not None else f"module:{self.module}"

    @classmethod
    def decode(cls, text: str) -> Origin:
        kind, sep, rest = text.partition(":")
        if not sep or not rest or kind not in ("file", "module"):
            raise ValueError(f"expected file:PATH or module:NAME, got {text[:60]!r}")
        return cls(file=rest) if kind == "file" else cls(module=rest)

    def __str__(self) -> str:
        return self.file if self.file is not None else str(self.module)


@dataclass(frozen=True)
class ScenarioRef:
    """A scenario by name and where it is defined (`origin` None: a shipped one)."""

    name: str
    origin: Origin | None = None

    def __str__(self) -> str:
        return self.name if self.origin is None else f"{self.origin}::{self.name}"


def origin_of_text(text: str) -> Origin:
    """`x.py` or an existing file: that file (made absolute); else a dotted module name."""
    if text.endswith(".py") or "/" in text or Path(text).is_file():
        return Origin(file=str(Path(text).resolve()))
    if not _MODULE.fullmatch(text):
        raise ScenarioError(f"{text!r} is neither a Python file (.py) nor a module name")
    return Origin(module=text)


def parse(text: str, extra: Iterable[Origin] = ()) -> ScenarioRef:
    """A scenario named on the command line: `FILE.py::NAME`, `pkg.mod::NAME`, or `NAME`
    (shipped, else the one of that name in the `extra` files and modules, --scenarios)."""
    where, sep, name = text.rpartition("::")
    if sep:
        if not name or not where:
            raise ScenarioError(f"scenario {text!r}: expected FILE.py::NAME or MODULE::NAME")
        return ScenarioRef(name, origin_of_text(where))
    if text in SCENARIOS:
        return ScenarioRef(text)
    for origin in extra:
        if text in scenarios(origin):
            return ScenarioRef(text, origin)
    known = list(SCENARIOS) + [n for o in extra for n in scenarios(o)]
    raise ScenarioError(f"unknown scenario {text!r}; known: {', '.join(known)} (or name one "
                        "in a file as FILE.py::NAME)")


def resolve(ref: ScenarioRef) -> Scenario:
    """The scenario `ref` names; ScenarioError (bad input) naming the file and why not.
    `NAME~ID` is a mutant of scenario NAME (harness/scenario/mutation.py)."""
    if mutation.SEP in ref.name:
        base, mid = ref.name.split(mutation.SEP, 1)
        return mutation.mutate(resolve(ScenarioRef(base, ref.origin)), mid)
    if ref.origin is None:
        return get(ref.name)
    found = scenarios(ref.origin)
    if ref.name not in found:
        raise ScenarioError(f"{ref.origin}: no scenario named {ref.name!r}; it defines: "
                            f"{', '.join(found) or 'none'}")
    return found[ref.name]


def scenarios(origin: Origin) -> dict[str, Scenario]:
    """The scenarios a file or module defines, by name (loaded afresh: the file may be new)."""
    module = _load(origin)
    found: dict[str, Scenario] = {}
    for scn in _scenarios_in(module):
        if found.setdefault(scn.name, scn) is not scn:
            raise ScenarioError(f"{origin}: two different scenarios are named {scn.name!r}")
    return found


def origin_of(scenario: Scenario, first: ModuleType | None = None) -> Origin | None:
    """Where `scenario` (an object a test holds) is defined: None if it is a shipped one, else
    the file of the module (`first`, then every loaded module) that holds it at module level.
    None too if no module does (built inside a function: a token cannot name it)."""
    if SCENARIOS.get(scenario.name) is scenario:
        return None
    modules = ([first] if first is not None else []) + list(sys.modules.values())
    for module in modules:
        file = getattr(module, "__file__", None)
        if not file or not str(file).endswith(".py"):
            continue
        if any(s is scenario for s in _scenarios_in(module)):
            return Origin(file=str(Path(file).resolve()))
    return None


def _scenarios_in(module: ModuleType) -> Iterator[Scenario]:
    for value in list(vars(module).values()):
        if isinstance(value, Scenario):
            yield value
        elif isinstance(value, list | tuple | dict):
            items = value.values() if isinstance(value, dict) else value
            yield from (v for v in items if isinstance(v, Scenario))


def _load(origin: Origin) -> ModuleType:
    """Import a user's file or module. Whatever goes wrong in it is the user's input, so it is
    a ScenarioError naming the file and the error, never a traceback."""
    try:
        if origin.module is not None:
            return _import(origin.module)
        path = Path(str(origin.file))
        if not path.is_file():
            raise ScenarioError(f"scenario file {path}: no such file")
        # a name of its own per file: two users' `test_mine.py` do not collide
        name = "textpoke_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ScenarioError(f"scenario file {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickle look a module up by its name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    except ScenarioError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any error in the user's code
        where = _where(e, origin)
        raise ScenarioError(f"cannot load scenarios from {origin}{where}: "
                            f"{type(e).__name__}: {e}") from None


def _import(name: str) -> ModuleType:
    """Import a module as `python -m` would find it: the current directory first."""
    here = str(Path.cwd())
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def _where(e: BaseException, origin: Origin) -> str:
    """`, line N` of the user's file where loading it failed, if the traceback reaches it."""
    if isinstance(e, SyntaxError) and e.lineno:
        return f", line {e.lineno}"
    tb, line = e.__traceback__, None
    while tb is not None:
        if origin.file is not None and tb.tb_frame.f_code.co_filename == origin.file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f", line {line}"
