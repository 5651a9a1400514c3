"""JWT ``jti`` replay cache (CDS Hooks 2.0 §Trusting CDS Clients: ``jti`` "used to protect
against replay attacks"; RFC 7519 §4.1.7).

:class:`ReplayCache` is the interface the authentication layer uses; the app picks the
implementation in ``app.py``. :class:`MemoryReplayCache` serves one process: under several
gunicorn workers each worker has its own, so a replay that reaches another worker is only
caught by an implementation shared between workers (a database).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("cds_service.security.replay")


class ReplayCache(Protocol):
    """Remembers token ids until they expire."""

    def remember(self, key: str, expires_at: float) -> bool:
        """Record token id `key` (already namespaced by issuer) until `expires_at` (POSIX seconds).
        True when first seen, False when it was seen before and has not expired (a replay)."""
        ...


class MemoryReplayCache:
    """In-process :class:`ReplayCache`, thread-safe; expired ids are pruned on every call.

    Memory is one entry per token accepted within its lifetime (the sandbox's tokens live
    300 s). ``clock`` returns POSIX seconds (``time.time``; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        # (expires_at, key) in expiry order, so pruning touches only what has expired.
        self._queue: list[tuple[float, str]] = []

    def remember(self, key: str, expires_at: float) -> bool:
        """See :meth:`ReplayCache.remember`."""
        with self._lock:
            now = self._clock()
            while self._queue and self._queue[0][0] <= now:
                expired_at, old = heapq.heappop(self._queue)
                if self._expiry.get(old) == expired_at:
                    del self._expiry[old]
            if key in self._expiry:
                return False
            if expires_at > now:
                self._expiry[key] = expires_at
                heapq.heappush(self._queue, (expires_at, key))
            return True

    def __len__(self) -> int:
        """Number of token ids currently remembered (expired ones may linger until the next call)."""
        with self._lock:
            return len(self._expiry)


class FallbackReplayCache:
    """A shared :class:`ReplayCache` (the database) with a per-process one standing in for it.

    Calls go to ``primary``; when it raises (database down, or not answering within its
    bound: :class:`cds_service.store.db.DatabaseReplayCache` stops waiting after
    ``DB_TIMEOUT_SECONDS`` and raises), the call goes to ``fallback`` and the failure is
    counted (``failures``) and logged: clients keep being served, with replay detection
    narrowed to this process until the database answers again. Every id is also recorded in
    ``fallback``, so a replay inside this process is caught either way. The primary must
    bound its own wait: this class adds none (it has no thread to leave behind).

    :meth:`remember` is :meth:`remember_here` then :meth:`remember_shared`. A caller that
    writes the shared record itself, in a transaction of its own (the hook call's audit
    record), calls :meth:`remember_here` first, then :meth:`pending` for what to write, and
    reports a failed write with :meth:`shared_unavailable`.
    """

    def __init__(self, primary: ReplayCache, fallback: ReplayCache) -> None:
        self._primary = primary
        self._fallback = fallback
        self.failures = 0

    def remember(self, key: str, expires_at: float) -> bool:
        """See :meth:`ReplayCache.remember`."""
        local = self.remember_here(key, expires_at)
        return self.remember_shared(key, expires_at) and local

    def remember_here(self, key: str, expires_at: float) -> bool:
        """:meth:`ReplayCache.remember` in this process only (no I/O)."""
        return self._fallback.remember(key, expires_at)

    def remember_shared(self, key: str, expires_at: float) -> bool:
        """:meth:`ReplayCache.remember` in the shared cache; True (not a replay, as far as is
        known) when it cannot answer, after :meth:`shared_unavailable`."""
        try:
            return self._primary.remember(key, expires_at)
        except Exception as exc:  # any driver error: the database is not answering
            self.shared_unavailable(exc)
            return True

    def shared_unavailable(self, exc: BaseException) -> None:
        """Count and log a shared record that could not be written (the exception type only:
        driver messages repeat the statement's parameters)."""
        self.failures += 1
        log.error("replay cache database unavailable (%s); checking this process only", type(exc).__name__)

    def pending(self, key: str, expires_at: float) -> PendingToken:
        """The shared record still to write for ``key`` (already accepted by :meth:`remember_here`)."""
        return PendingToken(key, expires_at, self)


@dataclass(frozen=True)
class PendingToken:
    """A token id accepted by this process whose shared record is still to be written, by
    whoever takes it (:func:`cds_service.store.audit.record_outcome`: in the audit transaction).

    Attributes:
        key: the issuer-namespaced token id (``"<iss> <jti>"``).
        expires_at: POSIX seconds until which it must be remembered.
        cache: where a failed write is reported (:meth:`FallbackReplayCache.shared_unavailable`)
            and where it is written alone (:meth:`FallbackReplayCache.remember_shared`).
    """

    key: str
    expires_at: float
    cache: FallbackReplayCache
