"""The audit log: every verified receipt, and every refused request, in a hash-chained
local SQLite database.

The library writes it, for every receipt it verifies: each answer of a ``connect()``
session and each stored receipt checked by
:func:`~ephemeralml.client.verify_stored_receipt` (``ephemeral verify``). By default
it is ``$EPHEMERALML_HOME/audit.db`` (``~/.ephemeralml/audit.db``, created 0600); a
caller chooses another file with ``audit=Path(...)`` or turns it off with
``audit=False``.

An entry holds the receipt's exact bytes and refers to the attestation document it
was verified against, which is stored once, keyed by its SHA-256; beside them, for
queries, the receipt's id, session, sequence number, model and mode, and when it was
recorded. No text, vector or other payload byte is ever in it (the receipt holds
their hashes; anyone holding a guess of a text can confirm it, hence 0600). Each
entry is chained to the one before by hash (protocol.md §12, :mod:`._audit_chain`);
``ephemeral audit`` re-verifies everything offline (:mod:`._audit_check`). A receipt
already in the log is not recorded again (``ephemeral verify`` of a stored receipt
that a session recorded adds nothing).

A request the enclave refuses (a sealed error: over-long text, unknown model) uses a
sequence number and has no receipt; :meth:`AuditLog.record_refusal` records it (kind
``refused``: the session, the seq, the error code, never the message, and the session's
attestation document, stored once), so the sequence has no gap. It was authenticated
in-session only (the session's AEAD); nothing offline can re-verify it.

Many threads and processes may record at once: each record is one
``BEGIN IMMEDIATE`` transaction on a connection of its own (the head is read and the
entry written under the write lock, so the chain stays one line), waiting up to
:data:`BUSY_TIMEOUT_S` for another writer; WAL lets readers (``ephemeral audit``) run
beside writers. A failure rolls the whole entry back. Commits are durable against a
crash of the program (WAL, ``synchronous=NORMAL``), not against a power cut.

The old format, one JSON line per receipt in ``audit.jsonl`` (ids and hashes), is
imported on first use when the log is the home's and it has no entries yet: the lines
become ``legacy`` entries (chained, not re-verifiable), then the file is renamed
``audit.jsonl.migrated`` (AU9).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ephemeralml.common._attestation import VerifiedAttestation
from ephemeralml.common._errors import ConfigError
from ephemeralml.common._receipt import VerifiedReceipt
from ephemeralml.runtime._home import default_home

from ._audit_chain import (
    GENESIS,
    KINDS,
    IndexFields,
    Link,
    Refusal,
    StoredEntry,
    legacy_error,
    parse_legacy_line,
    refusal_code,
)

__all__ = [
    "AUDIT_FILE",
    "BUSY_TIMEOUT_S",
    "LEGACY_AUDIT_FILE",
    "AuditChoice",
    "AuditLog",
    "AuditReader",
    "audit_log",
]

#: Relative to the home: the default audit log.
AUDIT_FILE = Path("audit.db")
#: Relative to the home: the old JSON-lines log, imported once (AU9).
LEGACY_AUDIT_FILE = Path("audit.jsonl")

#: How long a writer waits for another's transaction, in seconds. A transaction is a
#: few small inserts (well under a millisecond); a wait this long means a process is
#: stuck holding the lock, and recording (hence the session) fails with that said.
BUSY_TIMEOUT_S = 30.0

#: The largest old audit.jsonl imported (about 2.5 million lines of ~400 bytes).
MAX_LEGACY_BYTES = 1024 * 1024 * 1024

#: ``meta`` rows that mark a database as an audit log of this format.
FORMAT = "ephemeralml audit log"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attestations (
    sha256 BLOB PRIMARY KEY,
    document BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    n INTEGER PRIMARY KEY,
    recorded_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    record_sha256 BLOB NOT NULL,
    attestation_sha256 BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    entry_hash BLOB NOT NULL,
    receipt BLOB,
    legacy TEXT,
    receipt_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    refusal BLOB
);
CREATE INDEX IF NOT EXISTS entries_record ON entries (record_sha256);
CREATE INDEX IF NOT EXISTS entries_receipt_id ON entries (receipt_id);
CREATE INDEX IF NOT EXISTS entries_session ON entries (session_id, seq);
"""

#: A log of version 1 made before refusals were recorded has no ``refusal`` column; it
#: is added on first use, last, as new logs have it (older clients' inserts name their
#: columns, so they go on).
_ADD_REFUSAL = "ALTER TABLE entries ADD COLUMN refusal BLOB"

_INSERT = (
    "INSERT INTO entries (n, recorded_at_ms, kind, record_sha256, attestation_sha256, "
    "prev_hash, entry_hash, receipt, legacy, refusal, receipt_id, session_id, seq, "
    "model_id, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT n, recorded_at_ms, kind, record_sha256, attestation_sha256, prev_hash, "
    "entry_hash, receipt, legacy, refusal, receipt_id, session_id, seq, model_id, mode "
    "FROM entries ORDER BY n"
)


#: Connections a forked child inherited from its parent: kept, never closed.
_INHERITED: list[sqlite3.Connection] = []


class AuditLog:
    """Where verified receipts and refused requests are recorded: a database, or
    nowhere (:meth:`off`)."""

    __slots__ = ("_local", "legacy", "path")

    def __init__(self, path: Path | str | None, *, legacy: Path | str | None = None) -> None:
        #: The SQLite database; None: nothing is recorded.
        self.path = Path(path) if path is not None else None
        #: An old audit.jsonl to import when the log has no entries (AU9); None: none.
        self.legacy = Path(legacy) if legacy is not None else None
        self._local = threading.local()

    @classmethod
    def in_home(cls, home: Path | None = None) -> AuditLog:
        """``home/audit.db``, importing ``home/audit.jsonl`` (default home:
        ``$EPHEMERALML_HOME`` or ``~/.ephemeralml``)."""
        home = home or default_home()
        return cls(home / AUDIT_FILE, legacy=home / LEGACY_AUDIT_FILE)

    @classmethod
    def off(cls) -> AuditLog:
        """Record nothing: the caller keeps its own account of the receipts."""
        return cls(None)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path) if self.path else None!r})"

    def check(self) -> None:
        """Make sure the log can be written, now: a session checks this before it sends
        anything, so no inference is lost to a log that cannot take its entry."""
        if self.path is None:
            return
        with self._connect() as db, self._failing("write"):
            db.execute("BEGIN IMMEDIATE")  # the write lock, as a record takes it
            db.execute("ROLLBACK")

    def record(self, verified: VerifiedReceipt, *, at: datetime | None = None) -> None:
        """Add the entry of one verified receipt (nothing if the log is off, or if that
        receipt is already in it). ``at``: when it was recorded (default: now)."""
        if self.path is None:
            return
        r = verified.receipt
        doc = verified.attestation.document
        raw = verified.raw
        record_sha256 = hashlib.sha256(raw).digest()
        fields = IndexFields(r.receipt_id.hex(), r.session_id.hex(), r.seq, r.model_id, r.mode)
        given = _ms(at) if at is not None else None
        with self._connect() as db, self._failing("write"), _write(db):
            seen = db.execute(
                "SELECT 1 FROM entries WHERE record_sha256 = ? AND kind = 'receipt'",
                (record_sha256,),
            ).fetchone()
            if seen is None:
                db.execute(
                    "INSERT OR IGNORE INTO attestations (sha256, document) VALUES (?, ?)",
                    (doc.sha256, doc.raw),
                )
                # Now, under the write lock: entries are in the order of their times.
                at_ms = given if given is not None else _ms(datetime.now(UTC))
                self._append(db, at_ms, "receipt", record_sha256, doc.sha256, fields,
                             receipt=raw)  # fmt: skip

    def record_refusal(
        self,
        attestation: VerifiedAttestation,
        session_id: bytes,
        seq: int,
        code: str,
        *,
        at: datetime | None = None,
    ) -> None:
        """Add the entry of one request that the enclave of a session refused (a sealed
        error), before the caller hears of it; nothing if the log is off.

        ``attestation``: what the session was verified against (stored once, as for
        receipts); ``code``: the error's code (a code not of the form §6 gives codes
        is recorded as ``malformed``); the message is never recorded (it may quote the
        input). ``at``: when it was recorded (default: now). Every refusal is recorded,
        as it came: a session has one answer per seq, so two for one seq is a finding.
        """
        if self.path is None:
            return
        doc = attestation.document
        try:
            refusal = Refusal(session_id, seq, refusal_code(code), doc.sha256)
        except ValueError as e:
            raise ConfigError(f"cannot record the refusal: {e}") from e
        raw = refusal.to_cbor()
        given = _ms(at) if at is not None else None
        with self._connect() as db, self._failing("write"), _write(db):
            db.execute(
                "INSERT OR IGNORE INTO attestations (sha256, document) VALUES (?, ?)",
                (doc.sha256, doc.raw),
            )
            at_ms = given if given is not None else _ms(datetime.now(UTC))
            self._append(db, at_ms, "refused", hashlib.sha256(raw).digest(), doc.sha256,
                         refusal.index(), refusal=raw)  # fmt: skip

    def reader(self) -> contextlib.AbstractContextManager[AuditReader]:
        """The log as it is now (one read transaction), for ``ephemeral audit`` and
        ``export``; imports the old file first, like a write. ConfigError if there is
        no log (nothing was ever recorded) or it is off."""
        if self.path is None:
            raise ConfigError("the audit log is off")
        if not self.exists():
            raise ConfigError(f"no audit log at {self.path} (nothing recorded yet)")
        return self._reader()

    def exists(self) -> bool:
        """Whether there is a log to read: the database, or an old file to import."""
        if self.path is None:
            return False
        return self.path.exists() or (self.legacy is not None and self.legacy.exists())

    @contextlib.contextmanager
    def _reader(self) -> Iterator[AuditReader]:
        db = self._open()  # a connection of its own for the long read
        try:
            with self._failing("read"):
                db.execute("BEGIN")
                # AU1: every page and index readable, before any entry is believed.
                problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise ConfigError(
                        f"AU1 database: {self.path} is damaged ({'; '.join(problems)})"
                    )
                try:
                    yield AuditReader(db, self.path)
                finally:
                    db.execute("ROLLBACK")
        finally:
            db.close()

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _append(
        db: sqlite3.Connection,
        at_ms: int,
        kind: str,
        record_sha256: bytes,
        attestation: bytes,
        fields: IndexFields,
        *,
        receipt: bytes | None = None,
        legacy: str | None = None,
        refusal: bytes | None = None,
    ) -> None:
        """One entry after the head, inside the caller's write transaction."""
        head = db.execute("SELECT n, entry_hash FROM entries ORDER BY n DESC LIMIT 1").fetchone()
        n, prev = (1, GENESIS) if head is None else (int(head[0]) + 1, head[1])
        if not isinstance(prev, bytes) or len(prev) != len(GENESIS):
            # A damaged head (``ephemeral audit`` reports it): recording goes on, and
            # the chain shows the break there.
            prev = GENESIS
        link = Link(n, at_ms, kind, record_sha256, attestation, prev)
        db.execute(
            _INSERT,
            (n, at_ms, kind, record_sha256, attestation, prev, link.digest(), receipt, legacy,
             refusal, fields.receipt_id, fields.session_id, fields.seq, fields.model_id,
             fields.mode),
        )  # fmt: skip

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """SQLite's errors as one line: ``cannot write the audit log PATH: why``."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise self._error(doing, e) from e

    def _error(self, doing: str, e: sqlite3.Error) -> ConfigError:
        why = str(e)
        if type(e) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
            return ConfigError(
                f"AU1 database: {self.path} is damaged or not an audit database ({why})"
            )
        if "locked" in why:
            why = f"{why} (another process held it for over {BUSY_TIMEOUT_S:g} s)"
        return ConfigError(f"cannot {doing} the audit log {self.path}: {why}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the log, kept open between records (closing
        the last connection checkpoints the WAL, which costs a sync every time): made
        anew in a forked child, after an error, or when the file was replaced."""
        path = self.path
        assert path is not None
        cached: tuple[int, tuple[int, int], sqlite3.Connection] | None = getattr(
            self._local, "db", None
        )
        if cached is not None and (cached[0], cached[1]) == (os.getpid(), _identity(path)):
            db = cached[2]
        else:
            if cached is not None and cached[0] != os.getpid():
                # SQLite: a connection must not be used, nor closed, across fork().
                _INHERITED.append(cached[2])
            self._local.db = None
            db = self._open()
            self._local.db = (os.getpid(), _identity(path), db)
        try:
            yield db
        except BaseException:
            self._local.db = None
            db.close()
            raise

    def _open(self) -> sqlite3.Connection:
        """A new connection to a database with the audit schema (made if the file is
        new), the old log imported."""
        path = self.path
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Made owner-only when new. Never open and close a descriptor on a file that
            # exists: closing any descriptor drops every POSIX lock this process holds
            # on it, the locks of other threads' SQLite connections included, and a
            # write by another process then fails ("disk I/O error") or corrupts it.
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(
                        os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    )
        except OSError as e:
            raise ConfigError(f"cannot write the audit log {path}: {e.strerror}") from e
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error("open", e) from e
        try:
            with self._failing("open"):
                self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            with _write(db):
                if not db.execute("SELECT 1 FROM sqlite_master").fetchone():  # still new
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("format", FORMAT), ("version", str(FORMAT_VERSION))],
                    )
            db.execute("PRAGMA journal_mode = WAL")
        else:
            self._check_format(db, tables)
            self._add_refusal_column(db)
        db.execute("PRAGMA synchronous = NORMAL")
        if self.legacy is not None and self.legacy.exists():
            self._migrate(db, self.legacy)

    def _check_format(self, db: sqlite3.Connection, tables: set[str]) -> None:
        # AU1: a database of our format and version, and nothing else.
        meta = (
            dict(db.execute("SELECT key, value FROM meta").fetchall())
            if {"meta", "entries", "attestations"} <= tables
            else {}
        )
        if meta.get("format") != FORMAT:
            raise ConfigError(
                f"AU1 database: {self.path} is not an audit database (no audit tables)"
            )
        if meta.get("version") != str(FORMAT_VERSION):
            raise ConfigError(
                f"AU1 database: {self.path} is audit log version {meta.get('version')}; "
                f"this client reads version {FORMAT_VERSION}"
            )

    @staticmethod
    def _add_refusal_column(db: sqlite3.Connection) -> None:
        """A version 1 log from before refusals: the column, added once (under the
        write lock: two processes opening it at once add it once)."""
        if _has_refusal_column(db):
            return
        with _write(db):
            if not _has_refusal_column(db):
                db.execute(_ADD_REFUSAL)

    def _migrate(self, db: sqlite3.Connection, legacy: Path) -> None:
        """AU9: import the old audit.jsonl into a log with no entries, all or nothing,
        then rename it ``.migrated``. A log that has entries leaves the file alone,
        unless it is the very file imported before (the rename was left undone)."""
        empty = db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None
        done = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'legacy_%'").fetchall())
        try:
            size = legacy.stat().st_size
        except OSError:
            return  # another process has just migrated it
        if not empty and done.get("legacy_size") != str(size):
            return
        try:
            with open(legacy, "rb") as f:
                data = f.read(MAX_LEGACY_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as e:
            raise ConfigError(f"cannot read the old audit log {legacy}: {e.strerror}") from e
        if len(data) > MAX_LEGACY_BYTES:
            raise ConfigError(f"the old audit log {legacy} is over {MAX_LEGACY_BYTES} bytes")
        digest = hashlib.sha256(data).hexdigest()
        with _write(db):
            empty = db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None
            if empty:
                self._import_lines(db, legacy, data)
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [("legacy_sha256", digest), ("legacy_size", str(len(data)))],
                )
            elif (
                db.execute(
                    "SELECT 1 FROM meta WHERE key = 'legacy_sha256' AND value = ?", (digest,)
                ).fetchone()
                is None
            ):
                return  # not the file imported: left alone
        try:
            os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))
        except FileNotFoundError:
            pass  # another process renamed it
        except OSError as e:
            raise ConfigError(f"cannot rename the old audit log {legacy}: {e.strerror}") from e

    def _import_lines(self, db: sqlite3.Connection, legacy: Path, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError as e:
            at = data[: e.start].count(b"\n") + 1
            raise legacy_error(legacy, at, "not UTF-8") from e
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        parsed: list[tuple[str, int, bytes, IndexFields]] = []
        for i, one in enumerate(lines, 1):
            try:
                parsed.append((one, *parse_legacy_line(one)))
            except ValueError as e:
                raise legacy_error(legacy, i, str(e)) from e
        for text, at_ms, attestation, fields in parsed:
            record_sha256 = hashlib.sha256(text.encode()).digest()
            self._append(db, at_ms, "legacy", record_sha256, attestation, fields, legacy=text)


class AuditReader:
    """A log's entries and documents, read inside one transaction (:meth:`AuditLog.reader`).

    Rows are read as they are stored: a row damaged beyond the types of the schema
    is given back with what could be read, and the check reports it (AU3, AU4).
    """

    def __init__(self, db: sqlite3.Connection, path: Path | None) -> None:
        self._db = db
        self.path = path

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def entries(self) -> Iterator[StoredEntry | tuple[int, str]]:
        """Every entry in number order; ``(n, why)`` for a row whose values are not of
        an entry's types (edited to another type)."""
        for row in self._db.execute(_SELECT):
            yield _row_entry(row)

    def document(self, sha256: bytes) -> bytes | None:
        row = self._db.execute(
            "SELECT document FROM attestations WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return bytes(row[0]) if row is not None and isinstance(row[0], bytes) else None

    def documents(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored document, keyed as stored."""
        for key, doc in self._db.execute("SELECT sha256, document FROM attestations"):
            if isinstance(key, bytes) and isinstance(doc, bytes):
                yield key, doc


#: How a damaged row's missing record is named.
_RECORD_NAMES = {"receipt": "receipt", "refused": "refusal record", "legacy": "legacy line"}


def _has_refusal_column(db: sqlite3.Connection) -> bool:
    return any(row[1] == "refusal" for row in db.execute("PRAGMA table_info(entries)"))


def _row_entry(row: tuple[object, ...]) -> StoredEntry | tuple[int, str]:
    (n, at_ms, kind, record_sha256, attestation, prev, entry_hash, receipt, legacy,
     refusal, receipt_id, session_id, seq, model_id, mode) = row  # fmt: skip
    assert isinstance(n, int)  # INTEGER PRIMARY KEY: always an integer
    if not isinstance(kind, str) or kind not in KINDS:
        return n, f"its kind {kind!r} is not one of {', '.join(KINDS)}"
    record = {"receipt": receipt, "refused": refusal, "legacy": legacy}[kind]
    if not isinstance(record, str if kind == "legacy" else bytes):
        return n, f"its {_RECORD_NAMES[kind]} is missing"
    if not isinstance(entry_hash, bytes):
        return n, "its entry_hash is not bytes"
    texts = (receipt_id, session_id, model_id, mode)
    if not isinstance(seq, int) or not all(isinstance(v, str) for v in texts):
        return n, "its indexed fields are not of their types"
    try:
        link = Link(n, at_ms, kind, record_sha256, attestation, prev)  # type: ignore[arg-type]
    except ValueError as e:
        return n, str(e)
    index = IndexFields(receipt_id, session_id, seq, model_id, mode)  # type: ignore[arg-type]
    return StoredEntry(link, entry_hash, record, index)


def _identity(path: Path) -> tuple[int, int]:
    """Which file ``path`` is now (device, inode); (0, 0) if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def _write(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: the write lock first (no deadlock between two readers
    upgrading), all of it committed or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ConfigError("the audit log's time must be timezone-aware")
    return int(when.timestamp() * 1000)


#: What ``audit=`` takes: True (the default log), False (off), a path, or a log.
AuditChoice = AuditLog | Path | str | bool


def audit_log(choice: AuditChoice, *, home: Path | None = None) -> AuditLog:
    """The :class:`AuditLog` that ``audit=choice`` means."""
    if choice is True:
        return AuditLog.in_home(home)
    if choice is False:
        return AuditLog.off()
    if isinstance(choice, AuditLog):
        return choice
    if isinstance(choice, str | Path):
        return AuditLog(choice)
    raise ConfigError(f"audit must be True, False, a path or an AuditLog, got {choice!r}")
