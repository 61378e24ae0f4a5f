"""Exploration results in SQLite, written as they happen: a schedule's row (with its seed) is
committed before it runs and completed after, so a killed exploration resumes without losing a
failure or repeating a finished schedule. An exhaustive search also commits, with each
finished schedule, its frontier (harness/exhaustive.Search): where the next one starts."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS explorations (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL, params TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    exploration INTEGER NOT NULL, idx INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, verdict TEXT, detail TEXT, decisions INTEGER,
    token TEXT, shrunk TEXT, shrunk_decisions INTEGER,
    PRIMARY KEY (exploration, idx));
CREATE TABLE IF NOT EXISTS frontiers (
    exploration INTEGER PRIMARY KEY, state TEXT NOT NULL);
"""


class ResultsDb:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path))
        self.db.executescript(SCHEMA)
        self.db.commit()

    def exploration(self, params: dict, resume: bool) -> tuple[int, bool]:
        """(id, resumed): the latest exploration with these parameters if resuming, else new."""
        key = json.dumps(params, sort_keys=True)
        if resume:
            row = self.db.execute("SELECT id FROM explorations WHERE key = ? ORDER BY id DESC",
                                  (key,)).fetchone()
            if row:
                return row[0], True
        cur = self.db.execute("INSERT INTO explorations (key, params, created) VALUES (?, ?, ?)",
                              (key, key, time.time()))
        self.db.commit()
        return cur.lastrowid, False

    def done(self, exploration: int) -> dict[int, tuple]:
        rows = self.db.execute("SELECT idx, seed, verdict, detail, decisions, token, shrunk, "
                               "shrunk_decisions FROM schedules WHERE exploration = ? AND "
                               "status = 'done'", (exploration,))
        return {r[0]: r[1:] for r in rows}

    def started(self, exploration: int, idx: int, seed: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO schedules (exploration, idx, seed, status) "
                        "VALUES (?, ?, ?, 'started')", (exploration, idx, seed))
        self.db.commit()

    def finished(self, exploration: int, idx: int, verdict: str, detail: str, decisions: int,
                 token: str | None, shrunk: str | None, shrunk_decisions: int | None,
                 frontier: str | None = None) -> None:
        """Complete a schedule's row, and with `frontier` replace the exploration's frontier
        in the same transaction: a kill can never keep one without the other."""
        if frontier is not None:
            self.db.execute("INSERT OR REPLACE INTO frontiers (exploration, state) VALUES (?, ?)",
                            (exploration, frontier))
        self.db.execute("UPDATE schedules SET status = 'done', verdict = ?, detail = ?, "
                        "decisions = ?, token = ?, shrunk = ?, shrunk_decisions = ? "
                        "WHERE exploration = ? AND idx = ?",
                        (verdict, detail, decisions, token, shrunk, shrunk_decisions,
                         exploration, idx))
        self.db.commit()

    def rollback(self) -> None:
        """Drop a write an interrupt cut off before its commit: nothing half-recorded stays."""
        self.db.rollback()

    def frontier(self, exploration: int) -> str | None:
        row = self.db.execute("SELECT state FROM frontiers WHERE exploration = ?",
                              (exploration,)).fetchone()
        return row[0] if row else None

    def failures(self, exploration: int) -> list[tuple]:
        return list(self.db.execute(
            "SELECT idx, seed, verdict, detail, token, shrunk FROM schedules WHERE "
            "exploration = ? AND status = 'done' AND verdict != 'pass' ORDER BY idx",
            (exploration,)))
