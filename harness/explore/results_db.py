"""Exploration results in SQLite, written as they happen, so that a killed exploration resumes
without losing a failure or repeating a recorded schedule. On a cluster a batch's rows (with
their seeds) are committed as started before it is handed out and completed when it returns;
in one process, results are committed together about every second and a failure at once
(explore.Recorder). An exhaustive search commits with its results its frontier (exhaustive.py:
Search, partition.py): where the next schedule starts, so that --resume runs exactly those
not recorded."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from harness.errors import BadInput

SQLITE_INT = range(-(1 << 63), 1 << 63)  # what an INTEGER column holds

SCHEMA = """
CREATE TABLE IF NOT EXISTS explorations (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL, params TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    exploration INTEGER NOT NULL, idx INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, verdict TEXT, detail TEXT, decisions INTEGER,
    token TEXT, shrunk TEXT, shrunk_deviations INTEGER,
    PRIMARY KEY (exploration, idx));
CREATE TABLE IF NOT EXISTS frontiers (
    exploration INTEGER PRIMARY KEY, state TEXT NOT NULL);
"""


class ResultsDbError(BadInput):
    """A --db file that is not ours to use (unopenable, not SQLite, another schema), or a
    --resume that does not fit what the file holds. Nothing in the file is changed."""


def _columns(sql: str) -> dict[str, list[str]]:
    """Table -> column names, as SCHEMA declares them (read back from an in-memory database,
    so that the schema is declared once)."""
    mem = sqlite3.connect(":memory:")
    mem.executescript(sql)
    out = {t: [c[1] for c in mem.execute(f"PRAGMA table_info({t})")]
           for (t,) in mem.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    mem.close()
    return out


COLUMNS = _columns(SCHEMA)


class ResultsDb:
    def __init__(self, path: Path | str) -> None:
        self.path = path
        where = f"--db {path}"
        if Path(path).is_dir():
            raise ResultsDbError(f"{where}: is a directory, not a file")
        try:
            self.db = sqlite3.connect(str(path))
            tables = {t: [c[1] for c in self.db.execute(f"PRAGMA table_info({t})")]
                      for (t,) in self.db.execute(
                          "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as e:  # unopenable, or not a SQLite file ("file is not a database")
            raise ResultsDbError(f"{where}: cannot use it as a results database ({e})") from None
        foreign = sorted(t for t, cols in tables.items() if COLUMNS.get(t) != cols)
        if foreign:  # someone else's database: not ours to write into (ours may lack a table
            # an older textpoke did not have yet: that one is created)
            raise ResultsDbError(f"{where}: a SQLite database with another schema (tables "
                                 f"{', '.join(foreign)} are not textpoke's)")
        try:
            self.db.executescript(SCHEMA)
            self.db.commit()
        except sqlite3.Error as e:  # read-only, locked, ...
            raise ResultsDbError(f"{where}: cannot write to it ({e})") from None

    @staticmethod
    def check_seeds(seed: int, schedules: int | None) -> None:
        """Schedule i's seed is seed + i, stored as an SQLite INTEGER: refuse before running
        anything a seed the file could not hold."""
        last = seed + (schedules - 1 if schedules else 0)
        for s in (seed, last):
            if s not in SQLITE_INT:
                raise ResultsDbError(f"--seed {seed}: with --db, seeds (seed + i) must be in "
                                     f"[{SQLITE_INT.start}, {SQLITE_INT.stop - 1}]")

    def exploration(self, params: dict, resume: bool) -> tuple[int, bool]:
        """(id, resumed): with `resume`, the latest exploration with these parameters, and if
        there is none a ResultsDbError naming how the latest one saved differs; else a new
        exploration."""
        key = json.dumps(params, sort_keys=True)
        if resume:
            row = self.db.execute("SELECT id FROM explorations WHERE key = ? ORDER BY id DESC",
                                  (key,)).fetchone()
            if row:
                return row[0], True
            last = self.db.execute("SELECT params FROM explorations ORDER BY id DESC").fetchone()
            if last is None:
                raise ResultsDbError(f"--resume: --db {self.path} holds no exploration to "
                                     "continue; start one without --resume")
            raise ResultsDbError(f"--resume: the exploration saved in --db {self.path} differs "
                                 f"from this one: {_differences(last[0], params)}; give the "
                                 "same options, or start afresh without --resume")
        cur = self.db.execute("INSERT INTO explorations (key, params, created) VALUES (?, ?, ?)",
                              (key, key, time.time()))
        self.db.commit()
        return cur.lastrowid, False

    def done(self, exploration: int, failed_only: bool = False) -> dict[int, tuple]:
        """The finished schedules' rows by index (only the failing ones: `failed_only`)."""
        rows = self.db.execute("SELECT idx, seed, verdict, detail, decisions, token, shrunk, "
                               "shrunk_deviations FROM schedules WHERE exploration = ? AND "
                               "status = 'done'" + (" AND verdict != 'pass'" if failed_only
                                                    else ""), (exploration,))
        return {r[0]: r[1:] for r in rows}

    def done_count(self, exploration: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM schedules WHERE exploration = ? AND "
                               "status = 'done'", (exploration,)).fetchone()[0]

    def done_indices(self, exploration: int) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT idx FROM schedules WHERE exploration = ? "
                                              "AND status = 'done'", (exploration,))}

    def started_many(self, exploration: int, rows: list[tuple[int, int]]) -> None:
        """(idx, seed) rows committed together: a batch handed to a worker."""
        self.db.executemany("INSERT OR REPLACE INTO schedules (exploration, idx, seed, status) "
                            "VALUES (?, ?, ?, 'started')",
                            [(exploration, i, seed) for i, seed in rows])
        self.db.commit()

    def finished_many(self, exploration: int, rows: list[tuple],
                      frontier: str | None = None) -> None:
        """Rows (idx, seed, verdict, detail, decisions, token, shrunk, shrunk_deviations)
        done, with `frontier` in the same transaction: a batch or a search's slice is
        recorded whole or not at all."""
        if frontier is not None:
            self.db.execute("INSERT OR REPLACE INTO frontiers (exploration, state) VALUES (?, ?)",
                            (exploration, frontier))
        self.db.executemany("INSERT OR REPLACE INTO schedules (exploration, idx, seed, status, "
                            "verdict, detail, decisions, token, shrunk, shrunk_deviations) "
                            "VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)",
                            [(exploration, *r) for r in rows])
        self.db.commit()

    def rollback(self) -> None:
        """Drop a write an interrupt cut off before its commit: nothing half-recorded stays."""
        self.db.rollback()

    def frontier(self, exploration: int) -> str | None:
        row = self.db.execute("SELECT state FROM frontiers WHERE exploration = ?",
                              (exploration,)).fetchone()
        return row[0] if row else None


def _differences(saved_json: str, params: dict) -> str:
    """'seed: saved 0, now 5; variant: ...' for every parameter that differs."""
    try:
        saved = json.loads(saved_json)
    except ValueError:
        return "its parameters are damaged"
    if not isinstance(saved, dict):
        return "its parameters are damaged"
    return "; ".join(f"{k}: saved {json.dumps(saved.get(k))}, now {json.dumps(params.get(k))}"
                     for k in sorted(set(saved) | set(params)) if saved.get(k) != params.get(k))
