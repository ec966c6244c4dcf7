"""The receiver's durable history (sqlite, WAL): every notification as received, every decision with
its reason, every playbook run with its result. A notification is committed before the webhook is
answered 200, so nothing Alertmanager delivered is lost to a crash; on start, runs left `running` by
a previous process are marked `interrupted` and unprocessed notifications are processed."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    group_key TEXT,
    status TEXT,
    body TEXT NOT NULL,
    processed_at REAL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id INTEGER REFERENCES notifications(id),
    decided_at REAL NOT NULL,
    alert TEXT NOT NULL,
    node TEXT NOT NULL,
    alert_status TEXT NOT NULL,
    epoch INTEGER,
    action TEXT NOT NULL,
    target TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id INTEGER REFERENCES decisions(id),
    playbook TEXT NOT NULL,
    target TEXT,
    epoch_before INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL,
    result TEXT NOT NULL,
    detail TEXT
);
"""


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # ---- notifications ----

    def add_notification(self, body: dict) -> int:
        cur = self._exec("INSERT INTO notifications (received_at, group_key, status, body) VALUES (?, ?, ?, ?)",
                         (time.time(), str(body.get("groupKey", ""))[:500], body.get("status"), json.dumps(body)))
        return int(cur.lastrowid)

    def unprocessed(self) -> list[dict]:
        rows = self._rows("SELECT * FROM notifications WHERE processed_at IS NULL ORDER BY id")
        for row in rows:
            row["body"] = json.loads(row["body"])
        return rows

    def mark_processed(self, notification_id: int) -> None:
        self._exec("UPDATE notifications SET processed_at = ? WHERE id = ?", (time.time(), notification_id))

    def count_notifications(self) -> int:
        return int(self._rows("SELECT COUNT(*) AS n FROM notifications")[0]["n"])

    def count_unprocessed(self) -> int:
        return int(self._rows("SELECT COUNT(*) AS n FROM notifications WHERE processed_at IS NULL")[0]["n"])

    # ---- decisions ----

    def add_decision(self, notification_id: int | None, alert: str, node: str, alert_status: str, epoch: int | None,
                     action: str, target: str | None, reason: str) -> int:
        cur = self._exec("INSERT INTO decisions (notification_id, decided_at, alert, node, alert_status, epoch, "
                         "action, target, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (notification_id, time.time(), alert, node, alert_status, epoch, action, target, reason))
        return int(cur.lastrowid)

    def decision_counts(self) -> dict[str, int]:
        return {r["action"]: r["n"] for r in self._rows("SELECT action, COUNT(*) AS n FROM decisions GROUP BY action")}

    # ---- runs ----

    def start_run(self, decision_id: int, playbook: str, target: str | None, epoch_before: int | None) -> int:
        cur = self._exec("INSERT INTO runs (decision_id, playbook, target, epoch_before, started_at, result) "
                         "VALUES (?, ?, ?, ?, ?, 'running')", (decision_id, playbook, target, epoch_before, time.time()))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, result: str, detail: str = "") -> None:
        self._exec("UPDATE runs SET ended_at = ?, result = ?, detail = ? WHERE id = ?",
                   (time.time(), result, detail[-4000:], run_id))

    def mark_interrupted(self) -> list[dict]:
        """Runs a previous process left `running`: marked `interrupted` and returned."""
        rows = self._rows("SELECT * FROM runs WHERE result = 'running' ORDER BY id")
        self._exec("UPDATE runs SET result = 'interrupted', ended_at = ?, detail = "
                   "'the receiver restarted while this run was in progress' WHERE result = 'running'",
                   (time.time(),))
        return rows

    def running(self) -> dict | None:
        rows = self._rows("SELECT * FROM runs WHERE result = 'running' ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def runs(self, limit: int = 100) -> list[dict]:
        return self._rows(
            "SELECT r.*, d.alert, d.node, d.alert_status, d.action, d.reason, d.epoch FROM runs r "
            "JOIN decisions d ON d.id = r.decision_id ORDER BY r.id DESC LIMIT ?", (limit,))

    def decisions(self, limit: int = 100) -> list[dict]:
        """The newest decisions, each with when its notification arrived (received_at)."""
        return self._rows("SELECT d.*, n.received_at FROM decisions d LEFT JOIN notifications n "
                          "ON n.id = d.notification_id ORDER BY d.id DESC LIMIT ?", (limit,))

    def history_facts(self) -> dict:
        """What decide() needs to know about the past."""
        ok = self._rows("SELECT epoch_before, ended_at FROM runs WHERE playbook = 'failover.yml' "
                        "AND result = 'succeeded' ORDER BY id")
        # An interrupted run is not a failed one: a failover is finished at start-up
        # (decision.finish_interrupted), a rejoin started again by its alert.
        bad = self._rows("SELECT epoch_before FROM runs WHERE playbook = 'failover.yml' AND result = 'failed'")
        rejoin_bad = self._rows("SELECT target, epoch_before FROM runs WHERE playbook = 'rejoin.yml' "
                                "AND result = 'failed'")
        rejoin_ok = self._rows("SELECT target, epoch_before, COUNT(*) AS n FROM runs WHERE playbook = 'rejoin.yml' "
                               "AND result = 'succeeded' GROUP BY target, epoch_before")
        hour_ago = time.time() - 3600
        return {
            "failover_epochs": frozenset(r["epoch_before"] for r in ok),
            "last_failover_at": ok[-1]["ended_at"] if ok else None,
            "failed_failover_epochs": frozenset(r["epoch_before"] for r in bad),
            "rejoins_failed": frozenset((r["target"], r["epoch_before"]) for r in rejoin_bad),
            "failovers_last_hour": sum(1 for r in ok if (r["ended_at"] or 0) > hour_ago),
            "rejoins_succeeded": {(r["target"], r["epoch_before"]): int(r["n"]) for r in rejoin_ok},
        }

    def run_counts(self) -> dict[str, int]:
        return {f'{r["playbook"]}:{r["result"]}': r["n"] for r in
                self._rows("SELECT playbook, result, COUNT(*) AS n FROM runs GROUP BY playbook, result")}

    def last_failover_duration(self) -> float | None:
        rows = self._rows("SELECT started_at, ended_at FROM runs WHERE playbook = 'failover.yml' "
                          "AND result = 'succeeded' ORDER BY id DESC LIMIT 1")
        return rows[0]["ended_at"] - rows[0]["started_at"] if rows else None
