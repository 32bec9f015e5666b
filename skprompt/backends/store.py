"""A persistent, process-safe store of answered queries (a backend's ``cache=``).

Every (prompt, text) answer a backend gets from its model is written here as
soon as its request returns, keyed by what determines it: the backend's
identity (model, layout, template, label words...), the classes read out,
the prompt's bytes and the text. A fit that is interrupted (Ctrl-C, a crash,
a dead server) and run again with the same ``random_state`` asks the same
questions in the same order, finds the answered ones here and sends only the
rest: the same result as an uninterrupted fit, for the cost of the queries
never answered.

The store is a SQLite database (the standard library's ``sqlite3``): one file,
safe under concurrent readers and writers in several threads and processes
(write-ahead logging, a busy timeout), which is what GridSearchCV's workers
sharing one cache file need. A dedicated key-value package would add a
dependency for no gain at this size.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading

import numpy as np

__all__ = ["QueryStore"]

#: Keys per SELECT ... IN (...) (SQLite's default limit of host parameters is 32,766).
_CHUNK = 900
#: How long a writer waits for another process's transaction (milliseconds).
_BUSY_TIMEOUT_MS = 120_000


class QueryStore:
    """An on-disk map from query keys to answers (float64 score rows or int labels).

    Parameters
    ----------
    path : str or os.PathLike
        The database file; created (with its folder) if missing.

    Notes
    -----
    Each thread opens its own connection (SQLite connections must not be
    shared across threads); a pickled store keeps only its path. Writes of
    one request go in one transaction, so a request is either stored whole
    or not at all.
    """

    def __init__(self, path):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"cache must be a file path (str or os.PathLike) or None; got {path!r}.")
        self.path = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            raise ValueError(f"cache must be a file path, not a folder; got {path!r}.")
        os.makedirs(folder, exist_ok=True)
        self._local = threading.local()
        self._connect()  # a bad path or a file that is not a database fails here, not mid-fit

    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=True)
            try:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, value BLOB NOT NULL)")
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise ValueError(f"cache {self.path!r} is not a skprompt query cache (SQLite said: {exc}).") from None
            self._local.conn = conn
        return conn

    @staticmethod
    def key(identity, tag, prompt_key, text):
        """The 20-byte key of one (prompt, text) answer."""
        digest = hashlib.sha1()
        for part in (identity, tag, prompt_key, text):
            raw = part.encode("utf-8", "surrogatepass")
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
        return digest.digest()

    def get_many(self, keys, labels):
        """``{key: answer}`` for the keys found (a float64 row, or an int for labels)."""
        conn = self._connect()
        found = {}
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            rows = conn.execute(
                f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for key, value in rows:
                arr = np.frombuffer(value, dtype=np.int64 if labels else np.float64)
                found[bytes(key)] = int(arr[0]) if labels else arr.copy()
        return found

    def put_many(self, items):
        """Store ``(key, answer)`` pairs in one transaction (existing keys are kept)."""
        rows = [(key, np.ascontiguousarray(value, dtype=np.float64).tobytes() if np.ndim(value)
                 else np.int64(value).tobytes()) for key, value in items]
        if not rows:
            return
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO answers (key, value) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self):
        return int(self._connect().execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self):
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._local = threading.local()

    def __repr__(self):
        return f"QueryStore({self.path!r})"
