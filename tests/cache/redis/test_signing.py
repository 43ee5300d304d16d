"""The envelope around Redis entries: marker, HMAC-SHA256 signature over key and frame, and what it refuses."""

from __future__ import annotations

import pytest

from llamahome.cache.codecs import encode
from llamahome.cache.redis._signing import SIGNED, UNSIGNED, Envelope, EnvelopeError


def test_envelope_round_trip_signed_and_unsigned() -> None:
    frame = encode({"a": 1})
    plain = Envelope(None).seal(b"ns:sk", [frame])
    assert plain.startswith(UNSIGNED) and bytes(Envelope(None).open(b"ns:sk", plain)) == frame
    signed = Envelope("secret").seal(b"ns:sk", [frame])
    assert signed.startswith(SIGNED) and len(signed) == len(plain) + 32
    assert bytes(Envelope("secret").open(b"ns:sk", signed)) == frame
    # a reader without a secret trusts the server anyway; decoding stays pickle-free
    assert bytes(Envelope(None).open(b"ns:sk", signed)) == frame


@pytest.mark.parametrize(
    ("reader", "data", "foreign", "reason"),
    [
        ("other", Envelope("secret").seal(b"ns:sk", [b"frame"]), False, "signature"),
        ("secret", Envelope("secret").seal(b"ns:sOTHER", [b"frame"]), False, "signature"),  # replayed elsewhere
        ("secret", Envelope(None).seal(b"ns:sk", [b"frame"]), False, "not signed"),
        ("secret", SIGNED + b"short", False, "truncated"),
        ("secret", b"GIF89a...", True, "not written by LlamaHome"),
        (None, b"", True, "not written by LlamaHome"),
    ],
)
def test_envelope_rejects(reader: str | None, data: bytes, foreign: bool, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason) as info:
        Envelope(reader).open(b"ns:sk", data)
    assert info.value.foreign is foreign


def test_envelope_refuses_empty_secret() -> None:
    with pytest.raises(ValueError, match="secret=None"):
        Envelope(b"")
