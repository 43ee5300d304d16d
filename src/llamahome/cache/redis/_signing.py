"""The envelope around values the network tier stores: a marker, an optional HMAC-SHA256 signature, a stamp.

Entries read back from Redis are untrusted: anyone who can reach the server can write under our namespace.
Each value is wrapped as::

    b"LHR" + b"\\x02" + codec frame + stamp                                          unsigned
    b"LHR" + b"\\x03" + HMAC-SHA256(secret, key + frame + stamp) + codec frame + stamp   signed (32-byte tag)

The marker tells our entries from foreign data; the signature covers the full Redis key too, so a valid
entry cannot be replayed under another key. The codec frame is decoded with the safe codecs only. The
16-byte stamp (the writer's id and a counter) names the write: a writer that hears "key changed" can ask
Redis for the last 16 bytes of the entry (``GETRANGE key -16 -1``) to learn whether the change was its own
(see ``_invalidation``). Entries written before stamps existed (``\\x00`` unsigned, ``\\x01`` signed, no stamp)
are still read.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["Envelope", "EnvelopeError", "MARKER", "SIGNED", "UNSIGNED", "STAMP_SIZE", "TAG_SIZE"]

MARKER = b"LHR"
UNSIGNED = MARKER + b"\x02"
SIGNED = MARKER + b"\x03"
LEGACY_UNSIGNED = MARKER + b"\x00"
LEGACY_SIGNED = MARKER + b"\x01"
TAG_SIZE = 32
STAMP_SIZE = 16
_HEAD = len(UNSIGNED)
_ONE_SHOT_MAX = 256 * 1024

Buffer = bytes | bytearray | memoryview


class EnvelopeError(Exception):
    """Raised by :meth:`Envelope.open` with a short reason; the caller turns it into a miss and a counter."""

    def __init__(self, reason: str, foreign: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True when the data is not ours at all (no marker), False when it is ours but fails the check.
        self.foreign = foreign


class Envelope:
    """Wraps and unwraps codec frames; signs and verifies them when a ``secret`` is set."""

    def __init__(self, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if secret is not None and len(secret) == 0:
            raise ValueError("An empty secret signs nothing; pass secret=None to store unsigned entries.")
        self._secret = secret

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def _tag(self, key: bytes, frame: Buffer) -> bytes:
        assert self._secret is not None
        if len(frame) <= _ONE_SHOT_MAX:
            # hmac.digest is OpenSSL's one-shot HMAC: 3-4x faster than hmac.new for small values, and the
            # copy that joins key and frame costs less than the streaming object's setup.
            return hmac.digest(self._secret, key + bytes(frame), "sha256")
        mac = hmac.new(self._secret, key, hashlib.sha256)
        mac.update(frame)
        return mac.digest()

    def seal(self, key: bytes, frame_parts: Sequence[Buffer], stamp: bytes) -> bytes:
        """The bytes to store under ``key`` for a codec frame given as parts (joined once, here)."""
        if len(stamp) != STAMP_SIZE:
            raise ValueError(f"a stamp is {STAMP_SIZE} bytes")
        if self._secret is None:
            return b"".join((UNSIGNED, *frame_parts, stamp))
        size = sum(memoryview(p).nbytes for p in frame_parts)
        if size <= _ONE_SHOT_MAX:
            signed = b"".join((*frame_parts, stamp))
            return b"".join((SIGNED, self._tag(key, signed), signed))
        mac = hmac.new(self._secret, key, hashlib.sha256)  # large values: no extra copy of the frame
        for part in frame_parts:
            mac.update(part)
        mac.update(stamp)
        return b"".join((SIGNED, mac.digest(), *frame_parts, stamp))

    def open(self, key: bytes, data: Buffer) -> memoryview:
        """The codec frame inside ``data`` stored under ``key``; :class:`EnvelopeError` if it fails a check.

        With a secret, unsigned and badly signed entries fail. Without one, signed entries are accepted
        unverified: such a reader trusts the server anyway, and decoding stays safe (no pickle).
        """
        view = memoryview(data)
        head = bytes(view[:_HEAD])
        stamp = STAMP_SIZE if head in (UNSIGNED, SIGNED) else 0
        if head in (UNSIGNED, LEGACY_UNSIGNED):
            if self._secret is not None:
                raise EnvelopeError("the entry is not signed but this cache requires signatures")
            if len(view) < _HEAD + stamp:
                raise EnvelopeError("the entry is truncated")
            return view[_HEAD : len(view) - stamp]
        if head in (SIGNED, LEGACY_SIGNED):
            if len(view) < _HEAD + TAG_SIZE + stamp:
                raise EnvelopeError("the entry is truncated")
            signed = view[_HEAD + TAG_SIZE :]
            if self._secret is not None:
                tag = bytes(view[_HEAD : _HEAD + TAG_SIZE])
                if not hmac.compare_digest(tag, self._tag(key, signed)):
                    raise EnvelopeError("the signature does not match (another secret, or tampered data)")
            return signed[: len(signed) - stamp]
        raise EnvelopeError("the value was not written by LlamaHome", foreign=True)
