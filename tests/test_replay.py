"""The in-memory jti replay cache: a token id is accepted once within its lifetime."""

from __future__ import annotations

import threading
import types

from cds_service.security.replay import MemoryReplayCache


def make_cache():
    clock = types.SimpleNamespace(t=1_000_000.0)
    return MemoryReplayCache(clock=lambda: clock.t), clock


def test_first_use_accepted_replay_refused_until_expiry():
    cache, clock = make_cache()
    assert cache.remember("https://sandbox.cds-hooks.org a", clock.t + 300) is True
    assert cache.remember("https://sandbox.cds-hooks.org a", clock.t + 300) is False
    assert cache.remember("https://other.example a", clock.t + 300) is True
    clock.t += 299
    assert cache.remember("https://sandbox.cds-hooks.org a", clock.t + 300) is False
    clock.t += 2  # past the first expiry: the id is forgotten, and so is safe to accept again
    assert cache.remember("https://sandbox.cds-hooks.org a", clock.t + 300) is True


def test_expired_ids_are_pruned():
    cache, clock = make_cache()
    for n in range(1000):
        cache.remember(f"iss {n}", clock.t + 60)
    assert len(cache) == 1000
    clock.t += 61
    cache.remember("iss fresh", clock.t + 60)
    assert len(cache) == 1


def test_an_already_expired_token_is_not_stored():
    cache, clock = make_cache()
    assert cache.remember("iss old", clock.t - 1) is True
    assert len(cache) == 0


def test_concurrent_use_of_one_id_is_accepted_once():
    cache, clock = make_cache()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        results.append(cache.remember("iss same-jti", clock.t + 300))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
