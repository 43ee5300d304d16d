"""One "machine" for the coherence tests and benchmark: a TieredCache (memory, disk, Redis) in its own process.

    python machine.py URL NAMESPACE DISK_DIR [SECRET]

It reads one JSON command per line on stdin and answers one JSON line on stdout (``{"ok": result}``, or
``{"error": "..."}``). Commands: ``get``, ``set``, ``delete`` (``key``, ``value``), ``local`` (the memory and
disk copies of ``key``), ``wait`` (poll ``get`` until it returns ``value`` or ``timeout`` passes; answers the
value and the seconds waited), ``hammer`` (set ``key`` to ``<prefix>-<i>`` ``n`` times), ``stats``,
``subscribed`` (wait up to ``timeout`` for the invalidation listener), ``quit``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from llamahome.cache import DiskCache, MemoryCache, RedisCache, TieredCache


def serve(cache: TieredCache, command: dict[str, Any]) -> Any:
    op, key = command["op"], command.get("key")
    if op == "get":
        return cache.get(key)
    if op == "set":
        cache.set(key, command["value"])
        return True
    if op == "delete":
        return cache.delete(key)
    if op == "local":
        return [cache.tiers[0].get(key), cache.tiers[1].get(key)]
    if op == "wait":
        start = time.monotonic()
        deadline = start + command.get("timeout", 5.0)
        value = cache.get(key)
        while value != command.get("value") and time.monotonic() < deadline:
            time.sleep(0.0002)
            value = cache.get(key)
        return [value, time.monotonic() - start]
    if op == "hammer":
        for i in range(command["n"]):
            cache.set(key, f"{command['prefix']}-{i}")
        return True
    if op == "stats":
        stats = cache.stats
        return {"invalidations": stats.invalidations, "errors": stats.errors, "resets": cache.listener.resets}
    if op == "subscribed":
        deadline = time.monotonic() + command.get("timeout", 5.0)
        while not cache.listener.subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        return cache.listener.subscribed
    raise ValueError(f"unknown command {op!r}")


def main() -> int:
    url, namespace, disk_dir = sys.argv[1:4]
    secret = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    cache = TieredCache(
        MemoryCache(size=64),
        DiskCache(disk_dir, size=64),
        RedisCache(url, namespace=namespace, timeout=2.0, secret=secret),
    )
    print(json.dumps({"ok": cache.listener.subscribed}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                answer = {"ok": serve(cache, command)}
            except Exception as exc:  # report, keep serving
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
