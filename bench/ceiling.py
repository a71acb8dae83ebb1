"""The parse ceiling: bare loops that only split frames and parse them, with no dispatch.

They parse the very frames the bench server pushes in a burst (:func:`build_frames`), with our
generated classes and protobuf runtime, in one process on one core.  The events figure of a
client is compared with the first of these rates:

- ``rate``: the frames parsed the way the client's fast path parses them, with nothing else:
  the length prefix, a check of the envelope's fixed header bytes (``payloadType`` then
  ``payload``, see :func:`ctrader_twisted.messages._codec.decode_span`) and *one* protobuf
  parse, of the payload.  Any faster loop would have to parse less than the client must.
- ``two_step_rate``: the textbook loop, parsing the ``ProtoMessage`` envelope and then its
  payload (two protobuf parses per frame), as every other client does; for reference.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from bench._common import now, spot_fields
from ctrader_twisted import messages as m

__all__ = ["DISTINCT_FRAMES", "build_frames", "measure_ceiling"]

#: Distinct pre-encoded events cycled through by a burst.
DISTINCT_FRAMES = 4096

_PREFIX = struct.Struct("!I")


def build_frames(distinct: int = DISTINCT_FRAMES) -> list[bytes]:
    """The burst's spot-event frames, length prefix included."""
    return [m.encode_frame(m.ProtoOASpotEvent(**spot_fields(i))) for i in range(distinct)]


def _one_parse(stream: bytes, repeats: int) -> int:
    """Split ``stream``, check each envelope's header bytes, parse each payload once."""
    spot_from = m.ProtoOASpotEvent.FromString
    header = m.ProtoMessage(payloadType=m.payload_type_of(m.ProtoOASpotEvent), payload=b"")
    header_bytes = header.SerializeToString()[:3] + b"\x12"  # 08, 2131 as a varint, 12
    unpack = _PREFIX.unpack_from
    size = len(stream)
    checksum = 0
    for _ in range(repeats):
        offset = 0
        while offset < size:
            (length,) = unpack(stream, offset)
            start = offset + 4
            end = start + length
            if stream[start : start + 4] != header_bytes or start + 5 + stream[start + 4] != end:
                raise ValueError("a frame of another shape")  # the bench's frames never are
            checksum += spot_from(stream[start + 5 : end]).bid
            offset = end
    return checksum


def _two_parses(stream: bytes, repeats: int) -> int:
    """Split ``stream``, parse each envelope, then its payload."""
    envelope_from = m.ProtoMessage.FromString
    spot_from = m.ProtoOASpotEvent.FromString
    unpack = _PREFIX.unpack_from
    size = len(stream)
    checksum = 0
    for _ in range(repeats):
        offset = 0
        while offset < size:
            (length,) = unpack(stream, offset)
            end = offset + 4 + length
            envelope = envelope_from(stream[offset + 4 : end])
            checksum += spot_from(envelope.payload).bid
            offset = end
    return checksum


def _timed(loop: Callable[[bytes, int], int], stream: bytes, repeats: int) -> tuple[float, int]:
    started = now()
    checksum = loop(stream, repeats)
    return now() - started, checksum


def measure_ceiling(
    count: int, frames: list[bytes] | None = None, rounds: int = 3
) -> dict[str, object]:
    """Split and parse about ``count`` frames from one contiguous buffer, both ways.

    The two loops take turns, ``rounds`` times each over a share of ``count``, and each keeps
    its best round: a ceiling is what the machine allows, and on a shared machine a short
    stall only ever slows a round down.

    :returns: ``rate`` (frames per second, the client's way: one parse per frame),
        ``two_step_rate`` (envelope then payload), ``frames`` parsed by each loop and the
        protobuf backend.
    """
    from google.protobuf.internal import api_implementation

    frames = frames if frames is not None else build_frames()
    stream = b"".join(frames)
    repeats = max(1, -(-count // (len(frames) * rounds)))
    one = two = float("inf")
    checksums = set()
    for _ in range(rounds):
        elapsed, checksum = _timed(_one_parse, stream, repeats)
        one = min(one, elapsed)
        checksums.add(checksum)
        elapsed, checksum = _timed(_two_parses, stream, repeats)
        two = min(two, elapsed)
        checksums.add(checksum)
    if len(checksums) != 1:
        raise AssertionError("the two ceiling loops parsed different values")
    per_round = repeats * len(frames)
    return {
        "rate": per_round / one,
        "two_step_rate": per_round / two,
        "frames": per_round * rounds,
        "protobuf_backend": api_implementation.Type(),
        "checksum": checksums.pop(),
    }
