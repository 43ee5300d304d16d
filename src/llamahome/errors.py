"""The exceptions LlamaHome Cache raises.

Every error the library raises derives from :class:`CacheError`, so one ``except CacheError`` catches them
all. Messages are whole sentences that say what went wrong and what to do about it.

    CacheError
    ├── ConfigError               bad configuration (names the YAML path and what is accepted)
    ├── CacheKeyError             a key that is not ``str`` or ``bytes``, or too long   (also TypeError)
    ├── CacheValueError           a value the codecs cannot store safely                 (also TypeError)
    ├── ValueTooLargeError        a value larger than the whole tier                    (also ValueError)
    ├── CacheClosedError          the store was used after ``close()``
    ├── StorageError              the disk refused a write (full, read-only, permissions)
    │   └── DiskFullError         ENOSPC: no space left on the device
    ├── NotACacheError            a directory that holds something other than a cache of that kind
    ├── CorruptEntryError         an entry failed its checksum (normally reported as a miss)
    ├── NetworkError              the network tier (Redis) failed or timed out
    ├── ModelCacheError           a model file or name the model cache cannot accept
    │   └── ModelNotFoundError    the model is not cached (never added, deleted or evicted) (also KeyError)
    └── TrainingCacheError        a training cache misuse (batch larger than the budget, ...)
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ConfigError",
    "CacheKeyError",
    "CacheValueError",
    "ValueTooLargeError",
    "CacheClosedError",
    "StorageError",
    "DiskFullError",
    "NotACacheError",
    "CorruptEntryError",
    "NetworkError",
    "ModelCacheError",
    "ModelNotFoundError",
    "TrainingCacheError",
]


class CacheError(Exception):
    """Base class of every error LlamaHome Cache raises."""


class ConfigError(CacheError, ValueError):
    """The configuration is invalid; the message names the YAML path and what is accepted."""


class CacheKeyError(CacheError, TypeError):
    """A key the cache cannot use (wrong type or too long)."""


class CacheValueError(CacheError, TypeError):
    """A value the codecs cannot store without pickle (or that failed to decode)."""


class ValueTooLargeError(CacheError, ValueError):
    """A value larger than the whole tier's size bound; raise the tier's ``size`` to store it."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache was used after ``close()``."""


class StorageError(CacheError, OSError):
    """The storage below the cache refused an operation (read-only directory, permissions, I/O error)."""


class DiskFullError(StorageError):
    """No space left on the device (ENOSPC); free disk space or lower the cache's ``size``."""


class NotACacheError(CacheError):
    """The directory holds something other than a LlamaHome cache of that kind; the cache refuses to touch it."""


class CorruptEntryError(CacheError):
    """An entry failed its integrity check. Stores report this as a miss and count it in ``stats.corrupt``."""


class NetworkError(CacheError, ConnectionError):
    """The network tier (Redis) failed or timed out."""


class ModelCacheError(CacheError, ValueError):
    """The model cache cannot accept a model, file or name."""


class ModelNotFoundError(ModelCacheError, KeyError):
    """The model is not in the model cache (never added, deleted or evicted)."""

    __str__ = Exception.__str__  # KeyError would quote the message


class TrainingCacheError(CacheError, ValueError):
    """The training cache cannot serve a request as configured."""
