"""The envelope around values the network tier stores: a marker, and an optional HMAC-SHA256 signature.

Entries read back from Redis are untrusted: anyone who can reach the server can write under our namespace.
Each value is wrapped as::

    b"LHR" + b"\\x00" + codec frame                      unsigned
    b"LHR" + b"\\x01" + HMAC-SHA256(secret, key + frame) + codec frame   signed (32-byte tag)

The marker tells our entries from foreign data; the signature covers the full Redis key too, so a valid
entry cannot be replayed under another key. The codec frame is decoded with the safe codecs only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["Envelope", "EnvelopeError", "MARKER", "SIGNED", "UNSIGNED", "TAG_SIZE"]

MARKER = b"LHR"
UNSIGNED = MARKER + b"\x00"
SIGNED = MARKER + b"\x01"
TAG_SIZE = 32
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

    def seal(self, key: bytes, frame_parts: Sequence[Buffer]) -> bytes:
        """The bytes to store under ``key`` for a codec frame given as parts (joined once, here)."""
        if self._secret is None:
            return b"".join((UNSIGNED, *frame_parts))
        size = sum(memoryview(p).nbytes for p in frame_parts)
        if size <= _ONE_SHOT_MAX:
            frame = b"".join(frame_parts)
            return b"".join((SIGNED, self._tag(key, frame), frame))
        mac = hmac.new(self._secret, key, hashlib.sha256)  # large values: no extra copy of the frame
        for part in frame_parts:
            mac.update(part)
        return b"".join((SIGNED, mac.digest(), *frame_parts))

    def open(self, key: bytes, data: Buffer) -> memoryview:
        """The codec frame inside ``data`` stored under ``key``; :class:`EnvelopeError` if it fails a check.

        With a secret, unsigned and badly signed entries fail. Without one, signed entries are accepted
        unverified: such a reader trusts the server anyway, and decoding stays safe (no pickle).
        """
        view = memoryview(data)
        head = bytes(view[:_HEAD])
        if head == UNSIGNED:
            if self._secret is not None:
                raise EnvelopeError("the entry is not signed but this cache requires signatures")
            return view[_HEAD:]
        if head == SIGNED:
            if len(view) < _HEAD + TAG_SIZE:
                raise EnvelopeError("the entry is truncated")
            frame = view[_HEAD + TAG_SIZE :]
            if self._secret is not None:
                tag = bytes(view[_HEAD : _HEAD + TAG_SIZE])
                if not hmac.compare_digest(tag, self._tag(key, frame)):
                    raise EnvelopeError("the signature does not match (another secret, or tampered data)")
            return frame
        raise EnvelopeError("the value was not written by LlamaHome", foreign=True)
