"""
The CA's durable store: issued certificates, the approval queue, revocations.

SQLite in WAL mode with C{synchronous=FULL}: every change is one transaction
that is on disk before the HTTP answer leaves, so a C{kill -9} at any moment
loses nothing a client received and never leaves a half-written record.
Serial numbers are the primary key of C{certs}: a serial can never be used
twice, even across crashes.  Each request's CSR digest is unique, which is
how replays are recognised.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS certs (
    serial      TEXT PRIMARY KEY,           -- 32 hex digits
    kind        TEXT NOT NULL CHECK (kind IN ('node', 'server')),
    ip          TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    overlay     TEXT,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    csr_sha256  TEXT UNIQUE,
    spki_sha256 TEXT NOT NULL,
    der         BLOB NOT NULL,
    issued_at   INTEGER NOT NULL,
    via         TEXT NOT NULL,
    revoked_at  INTEGER,
    revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS certs_ip ON certs (ip);
CREATE INDEX IF NOT EXISTS certs_hostname ON certs (hostname);
CREATE INDEX IF NOT EXISTS certs_spki ON certs (spki_sha256);
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    csr_sha256  TEXT NOT NULL UNIQUE,
    csr_der     BLOB NOT NULL,
    ip          TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    overlay     TEXT,
    requester   TEXT NOT NULL DEFAULT '',
    created     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'collected')),
    decided_at  INTEGER,
    serial      TEXT REFERENCES certs (serial),
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """A store operation refused, described in one sentence."""


class DuplicateSerial(StoreError):
    """The serial number is already taken (draw another)."""


class DuplicateRequest(StoreError):
    """This CSR was already used."""


@dataclass(frozen=True)
class CertRecord:
    serial: str
    kind: str
    ip: str
    hostname: str
    overlay: str | None
    not_before: int
    not_after: int
    csr_sha256: str | None
    spki_sha256: str
    der: bytes
    issued_at: int
    via: str
    revoked_at: int | None = None
    revoke_reason: str | None = None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after <= now:
            return "expired"
        return "valid"

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "kind": self.kind,
            "ip": self.ip,
            "hostname": self.hostname,
            "overlay": self.overlay,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "issued_at": self.issued_at,
            "via": self.via,
            "state": self.state(now),
            "revoked_at": self.revoked_at,
            "revoke_reason": self.revoke_reason,
        }


@dataclass(frozen=True)
class QueuedRequest:
    id: int
    csr_sha256: str
    csr_der: bytes
    ip: str
    hostname: str
    overlay: str | None
    requester: str
    created: int
    state: str
    decided_at: int | None
    serial: str | None
    reason: str | None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ip": self.ip,
            "hostname": self.hostname,
            "overlay": self.overlay,
            "requester": self.requester,
            "created": self.created,
            "state": self.state,
            "serial": self.serial,
            "reason": self.reason,
            "csr_sha256": self.csr_sha256,
        }


_CERT_COLUMNS = (
    "serial, kind, ip, hostname, overlay, not_before, not_after, csr_sha256, spki_sha256, "
    "der, issued_at, via, revoked_at, revoke_reason"
)
_REQ_COLUMNS = (
    "id, csr_sha256, csr_der, ip, hostname, overlay, requester, created, state, decided_at, "
    "serial, reason"
)

#: table -> (its columns, the record a row becomes)
_TABLES: dict[str, tuple[str, Any]] = {
    "certs": (_CERT_COLUMNS, CertRecord),
    "requests": (_REQ_COLUMNS, QueuedRequest),
}


class Store:
    """One SQLite database file; all methods are short synchronous transactions."""

    def __init__(self, path: str) -> None:
        self.path = path
        existed = os.path.exists(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not existed:
            os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Idempotent DDL; each statement commits on its own.
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- certificates -------------------------------------------------------

    def _insert_cert(self, db: sqlite3.Connection, rec: CertRecord) -> None:
        try:
            db.execute(
                f"INSERT INTO certs ({_CERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.serial,
                    rec.kind,
                    rec.ip,
                    rec.hostname,
                    rec.overlay,
                    rec.not_before,
                    rec.not_after,
                    rec.csr_sha256,
                    rec.spki_sha256,
                    rec.der,
                    rec.issued_at,
                    rec.via,
                    rec.revoked_at,
                    rec.revoke_reason,
                ),
            )
        except sqlite3.IntegrityError as e:
            if "certs.serial" in str(e):
                raise DuplicateSerial(f"serial {rec.serial} is already used") from None
            if "csr_sha256" in str(e):
                raise DuplicateRequest("this certificate request was already used") from None
            raise

    def _supersede(self, db: sqlite3.Connection, rec: CertRecord) -> list[str]:
        rows = db.execute(
            "SELECT serial FROM certs WHERE kind = 'node' AND ip = ? AND serial != ? "
            "AND revoked_at IS NULL AND not_after > ?",
            (rec.ip, rec.serial, rec.issued_at),
        ).fetchall()
        serials = [r[0] for r in rows]
        db.executemany(
            "UPDATE certs SET revoked_at = ?, revoke_reason = 'superseded' WHERE serial = ?",
            [(rec.issued_at, s) for s in serials],
        )
        return serials

    def add_cert(self, rec: CertRecord, supersede: bool = False) -> list[str]:
        """
        Record an issued certificate, durably, in one transaction.

        @param supersede: also revoke earlier valid node certificates for the same IP.
        @return: the serials revoked as superseded.
        @raise DuplicateSerial: the serial is taken; nothing was written.
        @raise DuplicateRequest: the CSR was already used; nothing was written.
        """
        with self.transaction() as db:
            self._insert_cert(db, rec)
            return self._supersede(db, rec) if supersede else []

    def _first(self, table: str, where: str, *args: Any) -> Any:
        """The first row of C{table} (certs or requests) matching C{where}, or L{None}."""
        columns, record = _TABLES[table]
        row = self.db.execute(
            f"SELECT {columns} FROM {table} WHERE {where} LIMIT 1", args
        ).fetchone()
        return record(*row) if row else None

    def _first_cert(self, where: str, *args: Any) -> CertRecord | None:
        return self._first("certs", where, *args)  # type: ignore[no-any-return]

    def cert(self, serial: str) -> CertRecord | None:
        return self._first_cert("serial = ?", serial)

    def cert_by_csr(self, digest: str) -> CertRecord | None:
        return self._first_cert("csr_sha256 = ?", digest)

    def valid_cert_for_key(self, spki_digest: str, now: float) -> CertRecord | None:
        return self._first_cert(
            "spki_sha256 = ? AND revoked_at IS NULL AND not_after > ?", spki_digest, int(now)
        )

    def certs(self, kind: str | None = None) -> list[CertRecord]:
        if kind is None:
            rows = self.db.execute(f"SELECT {_CERT_COLUMNS} FROM certs ORDER BY issued_at, serial")
        else:
            rows = self.db.execute(
                f"SELECT {_CERT_COLUMNS} FROM certs WHERE kind = ? ORDER BY issued_at, serial",
                (kind,),
            )
        return [CertRecord(*r) for r in rows.fetchall()]

    def serials(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT serial FROM certs").fetchall()}

    def revoke(self, target: str, now: float, reason: str = "revoked") -> list[str]:
        """
        Revoke every unrevoked certificate matching C{target}: a serial (hex,
        colons allowed), an IP address or a host name.

        @return: the serials revoked (empty when nothing matched).
        """
        t = target.strip().lower()
        serial = t.replace(":", "")
        with self.transaction() as db:
            rows = db.execute(
                "SELECT serial FROM certs WHERE revoked_at IS NULL AND "
                "(serial = ? OR ip = ? OR hostname = ?)",
                (serial.rjust(32, "0") if serial else serial, t, t.rstrip(".")),
            ).fetchall()
            serials = [r[0] for r in rows]
            db.executemany(
                "UPDATE certs SET revoked_at = ?, revoke_reason = ? WHERE serial = ?",
                [(int(now), reason, s) for s in serials],
            )
        return serials

    def revoked(self, now: float) -> list[tuple[str, int]]:
        """Revoked certificates that have not expired yet (what the CRL lists)."""
        rows = self.db.execute(
            "SELECT serial, revoked_at FROM certs WHERE revoked_at IS NOT NULL AND not_after > ? "
            "ORDER BY serial",
            (int(now),),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def next_crl_number(self) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'crl_number'").fetchone()
            number = (row[0] if row else 0) + 1
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('crl_number', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (number,),
            )
        return number

    # -- the approval queue -------------------------------------------------

    def _first_request(self, where: str, *args: Any) -> QueuedRequest | None:
        return self._first("requests", where, *args)  # type: ignore[no-any-return]

    def request_by_csr(self, digest: str) -> QueuedRequest | None:
        return self._first_request("csr_sha256 = ?", digest)

    def request(self, request_id: int) -> QueuedRequest | None:
        return self._first_request("id = ?", request_id)

    def pending_for_ip(self, ip: str) -> QueuedRequest | None:
        return self._first_request("ip = ? AND state = 'pending'", ip)

    def enqueue(
        self,
        digest: str,
        der: bytes,
        ip: str,
        hostname: str,
        overlay: str | None,
        requester: str,
        now: float,
    ) -> int:
        with self.transaction() as db:
            try:
                cur = db.execute(
                    "INSERT INTO requests (csr_sha256, csr_der, ip, hostname, overlay, requester, "
                    "created, state) VALUES (?,?,?,?,?,?,?, 'pending')",
                    (digest, der, ip, hostname, overlay, requester, int(now)),
                )
            except sqlite3.IntegrityError:
                raise DuplicateRequest("this certificate request is already queued") from None
        assert cur.lastrowid is not None
        return cur.lastrowid

    def requests(self, state: str | None = "pending") -> list[QueuedRequest]:
        if state is None:
            rows = self.db.execute(f"SELECT {_REQ_COLUMNS} FROM requests ORDER BY id")
        else:
            rows = self.db.execute(
                f"SELECT {_REQ_COLUMNS} FROM requests WHERE state = ? ORDER BY id", (state,)
            )
        return [QueuedRequest(*r) for r in rows.fetchall()]

    def approve(self, request_id: int, rec: CertRecord, supersede: bool, now: float) -> list[str]:
        """Record the certificate issued for a pending request and mark it approved, atomically."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                raise StoreError(f"there is no request {request_id}")
            if row[0] != "pending":
                raise StoreError(f"request {request_id} is {row[0]}, not pending")
            self._insert_cert(db, rec)
            db.execute(
                "UPDATE requests SET state = 'approved', decided_at = ?, serial = ? WHERE id = ?",
                (int(now), rec.serial, request_id),
            )
            return self._supersede(db, rec) if supersede else []

    def reject(self, request_id: int, reason: str, now: float) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                raise StoreError(f"there is no request {request_id}")
            if row[0] != "pending":
                raise StoreError(f"request {request_id} is {row[0]}, not pending")
            db.execute(
                "UPDATE requests SET state = 'rejected', decided_at = ?, reason = ? WHERE id = ?",
                (int(now), reason, request_id),
            )

    def collect(self, request_id: int) -> None:
        """The client has fetched the certificate of an approved request."""
        with self.transaction() as db:
            db.execute(
                "UPDATE requests SET state = 'collected' WHERE id = ? AND state = 'approved'",
                (request_id,),
            )

    def expire_pending(self, before: float) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE requests SET state = 'rejected', decided_at = created, "
                "reason = 'expired while waiting for approval' "
                "WHERE state = 'pending' AND created < ?",
                (int(before),),
            )
        return cur.rowcount

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])
