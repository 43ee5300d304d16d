"""The envelope around Redis entries: marker, HMAC-SHA256 signature over key and frame, and what it refuses."""

from __future__ import annotations

import pytest

from llamahome.cache.codecs import encode
import hmac

from llamahome.cache.redis._signing import LEGACY_SIGNED, LEGACY_UNSIGNED, SIGNED, UNSIGNED, Envelope, EnvelopeError

STAMP = b"origin-8" + (7).to_bytes(8, "big")


def test_envelope_round_trip_signed_and_unsigned() -> None:
    frame = encode({"a": 1})
    plain = Envelope(None).seal(b"ns:sk", [frame], STAMP)
    assert plain.startswith(UNSIGNED) and plain.endswith(STAMP) and bytes(Envelope(None).open(b"ns:sk", plain)) == frame
    signed = Envelope("secret").seal(b"ns:sk", [frame], STAMP)
    assert signed.startswith(SIGNED) and signed.endswith(STAMP) and len(signed) == len(plain) + 32
    assert bytes(Envelope("secret").open(b"ns:sk", signed)) == frame
    # a reader without a secret trusts the server anyway; decoding stays pickle-free
    assert bytes(Envelope(None).open(b"ns:sk", signed)) == frame


@pytest.mark.parametrize(
    ("reader", "data", "foreign", "reason"),
    [
        ("other", Envelope("secret").seal(b"ns:sk", [b"frame"], STAMP), False, "signature"),
        ("secret", Envelope("secret").seal(b"ns:sOTHER", [b"frame"], STAMP), False, "signature"),  # replayed elsewhere
        ("secret", Envelope(None).seal(b"ns:sk", [b"frame"], STAMP), False, "not signed"),
        ("secret", SIGNED + b"short", False, "truncated"),
        (None, UNSIGNED + b"short", False, "truncated"),  # shorter than a stamp
        # the stamp is signed too: another writer's stamp on our frame does not verify
        ("secret", Envelope("secret").seal(b"ns:sk", [b"frame"], STAMP)[:-16] + b"x" * 16, False, "signature"),
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


def test_entries_written_before_stamps_are_still_read() -> None:
    frame = encode([1, 2])
    legacy_tag = hmac.digest(b"secret", b"ns:sk" + frame, "sha256")
    assert bytes(Envelope(None).open(b"ns:sk", LEGACY_UNSIGNED + frame)) == frame
    assert bytes(Envelope("secret").open(b"ns:sk", LEGACY_SIGNED + legacy_tag + frame)) == frame


def test_a_stamp_must_be_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Envelope(None).seal(b"ns:sk", [b"frame"], b"short")
