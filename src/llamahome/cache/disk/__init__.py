"""DiskCache: a persistent store on a local directory, shared safely by several processes.

Layout of the cache directory (0700; files 0600)::

    .llamahome-cache               the marker: kind, format, bound and policy (see _marker)
    index.sqlite3 (+ -wal, -shm)   SQLite in WAL mode: one row per entry, small values inline
    data/ab/<32 hex>               one file per large value (random names: never derived from the key)
    tmp/.value.<pid>-<hex>.tmp     values being written (cache.files temp names: the writer's pid)
    lock                           held only while opening (one process repairs at a time)
    reserve                        space given up to free entries on a full disk (see _marker)

The cache acts only on files it recognises as its own (name and header), never through a symlink; every
entry is bound to its key (an inline value's checksum is seeded with the key's hash, a value file's header
holds the key), so a damaged or swapped key in the index reads as a miss, never as another key's value.

How a write stays atomic (kill -9 at any instant leaves the old value, the new value or a miss):

1. The value is encoded and written to ``tmp/`` outside any lock, in large ``writev`` calls (no joining copy).
2. ``BEGIN IMMEDIATE`` takes the index's write lock; the temp file is renamed into ``data/`` *inside* the
   transaction, so cleanup (which lists ``data/`` and then checks the index under the same lock) can never
   mistake a file about to be committed for an orphan.
3. One transaction replaces the row, evicts to the bound (the totals live in the index, kept by triggers, so
   the bound holds across every process), and commits. Files of replaced or evicted entries are unlinked
   after the commit; a kill in between leaves orphan files that ``cleanup()`` removes.

Durability: WAL with ``synchronous=NORMAL`` keeps the index consistent after kill -9 or a crash; the last
commits before a power loss may be lost. Value files are not fsynced (``sync=True`` fsyncs them and commits
with ``synchronous=FULL``); a value file damaged by a power loss fails its xxh3 checksum and reads as a miss.
Every read verifies the checksum, so a damaged entry is never returned: it is removed, logged and counted in
``stats.corrupt``.

LRU/LFU bookkeeping is batched, never a write per read: reads record access times in memory, written in one
transaction at most once a second, before any eviction decision, on ``cleanup()`` and on ``close()``. For lru
uses are recorded to a resolution: an entry whose recorded use is less than 1/64 of the entries' age span old
keeps its place when read or rewritten, as ``relatime`` does for file access times and memcached for its LRU
(it bumps an item at most once a minute). There is no absolute floor: a cache that turns over many times a
second still evicts by use. A set that rewrites an existing entry never moves it in the lru/lfu index itself: when its recorded use is older than the resolution, the use joins the
same batch as reads (a write transaction that is due anyway carries the batch along), because moving the
index entry inside every set would cost a third of a small set. Other processes see this process's uses after
its next flush (at most about a second); each process's own evictions always see them, since the batch is
written in the evicting transaction before victims are chosen, and the keys being set are never victims.
In an lru cache of 200k entries or more, only the uses of entries in the front of the order (the oldest 1/8,
where evictions take victims) are written within the second; the others wait for a batch of up to 64k uses
(1/16 of the entries) or 10 seconds, so that a batch rewrites each page of ``uses`` several times instead of
once (uniform reads over 1M entries: 15 us a use in batches of 10k, 5 us in batches of 64k). Other processes
may see those uses up to 10 seconds late; only an entry that moves from behind the front to being evicted in
that time can be ordered by its older use.
Uses live in a narrow table of their own (``uses``: id, last use, count; index version 4), not in the entry's
row beside its inline value: a batch of uses then rewrites a few hundred small pages instead of one page of
the whole table per use (about 3.5 us a use instead of 14-17 us at 100k entries; see ``_sqlite``).

Several processes: every write is one ``BEGIN IMMEDIATE`` transaction; a process that finds the write lock
taken retries after short jittered sleeps (from 50 us) for up to 60 s and only then raises StorageError, so
"database is locked" never reaches the caller. Readers never wait (WAL). An index larger than the page cache
(32 MiB) is read through a memory map, except while other processes commit to it often: each of their
commits makes SQLite drop a reader's page cache and unmap the index, and faulting the pages in again cost
more than reading them (at 1M entries a get took 33-37 us of CPU beside a process setting 2,000 entries a
second, 18-20 us unmapped). Every 1,024 reads or commits a process looks at ``PRAGMA data_version``; it
unmaps while more than half of its recent looks saw other commits and maps again below 1/8.

Damage: a missing, truncated or corrupt index is found on open (an O(1) look at the file's header: a full
``PRAGMA quick_check`` runs only when it looks wrong, or with ``check_on_open=True``) or by the first
operation that meets it; the index is then removed with a warning in the log and rebuilt from the value
files, whose headers carry key, times and checksum (small inline entries are lost).

Checkpoints: SQLite's automatic checkpoint is off; each process copies the WAL back into the index and lets it
start over (``RESTART``) once its own commits have written about ``wal_pages()`` pages (see
``_sqlite.checkpoint`` for why: with two writing processes the automatic one fsynced on every commit).

The bound covers the directory, not only the entries: eviction keeps the entries within the bound less what
the index's pages take beyond the inline values and the value files' last blocks (beyond an allowance of
1/20 of the bound; see ``Index.measure``), so ``du`` of a closed cache stays within about 1.1 x the bound.
Outside it: the reserve (1/64 of the bound, 128 KiB to 1 MiB), the folders (up to 256 fan-out folders of
4 KiB), free index pages and, while the cache is open, the WAL (1/8 of the bound between checkpoints, at
most 256 MiB per writing process).
A set that has to evict evicts a batch, down to 1/64 of the bound (at most 1 MiB) under the limit.
POSIX only (fcntl locks, fork handling).

Where things are::

    _store.py    DiskCache: get/set/delete/clear, encoding, the write path (atomic rename + one transaction)
    _index.py    Index: the SQLite connection, write transactions, checkpoints, batched uses, eviction
    _sqlite.py   the index's schema, migrations, open/repair/rebuild, the eviction SQL, lock retries, errors
    _files.py    value files: header format, atomic writes, checked reads, links refused
    _marker.py   the marker (kind, format, bound, policy) and the full-disk reserve
    _upkeep.py   cleanup(): expiry, the bound, damaged rows, orphan and temp files, reconciliation
"""

from __future__ import annotations

from ._store import INLINE_MAX, POLICIES, DiskCache

__all__ = ["DiskCache", "POLICIES", "INLINE_MAX"]
