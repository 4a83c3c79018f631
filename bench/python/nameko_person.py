"""The Python nameko side of the benchmark: person `get`, `create` and
`list` served by nameko 2.14.1 on the same kind of SQLite database as the
Rust person-service (the same `person` table; the bench seeds the file with
person-service's own migrations), in WAL mode with synchronous=FULL so an
answered create is as durable as the Rust service's.

Run by the bench as `nameko run --config nameko_person.yaml nameko_person`
(max_workers 10, nameko's default). Environment: PERSON_SERVICE_NAME (the
service name), PERSON_DB (the database file).

One connection for the process: nameko's workers are eventlet green threads
of one OS thread, and a sqlite3 call does not yield, so they take turns.
Each create is its own transaction (autocommit), as a plain nameko service
would write it. No events are dispatched.
"""
import os
import sqlite3

from nameko.extensions import DependencyProvider
from nameko.rpc import rpc

SCHEMA = """CREATE TABLE IF NOT EXISTS person (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    first_name TEXT    NOT NULL,
    last_name  TEXT    NOT NULL,
    age        INTEGER NOT NULL CHECK (age BETWEEN 0 AND 150),
    member     INTEGER NOT NULL DEFAULT 0 CHECK (member IN (0, 1))
)"""

COLUMNS = "id, first_name, last_name, age, member"


class PersonNotFound(Exception):
    pass


class ValidationError(Exception):
    pass


def record(row):
    return {
        "id": row[0],
        "first_name": row[1],
        "last_name": row[2],
        "age": row[3],
        "member": bool(row[4]),
    }


class Database(DependencyProvider):
    def setup(self):
        conn = sqlite3.connect(
            os.environ["PERSON_DB"], isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(SCHEMA)
        self.conn = conn

    def stop(self):
        self.conn.close()

    def get_dependency(self, worker_ctx):
        return self.conn


class NamekoPerson:
    name = os.environ["PERSON_SERVICE_NAME"]

    db = Database()

    @rpc
    def get(self, id):
        row = self.db.execute(
            "SELECT " + COLUMNS + " FROM person WHERE id = ?", (id,)
        ).fetchone()
        if row is None:
            raise PersonNotFound(id)
        return record(row)

    @rpc
    def create(self, first_name, last_name, age, member=False):
        for field, value in (("first_name", first_name), ("last_name", last_name)):
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(field, "must be a non-empty string")
        if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 150:
            raise ValidationError("age", "must be an integer between 0 and 150")
        if not isinstance(member, bool):
            raise ValidationError("member", "must be a boolean")
        cur = self.db.execute(
            "INSERT INTO person (first_name, last_name, age, member) VALUES (?, ?, ?, ?)",
            (first_name, last_name, age, int(member)),
        )
        return cur.lastrowid

    @rpc
    def list(self, limit=None, after_id=None):
        rows = self.db.execute(
            "SELECT " + COLUMNS + " FROM person WHERE id > ? ORDER BY id LIMIT ?",
            (after_id or 0, -1 if limit is None else limit),
        ).fetchall()
        return [record(r) for r in rows]
