"""The parse ceiling: a bare loop that only splits frames and parses them, with no dispatch.

It parses the very frames the bench server pushes in a burst (:func:`build_frames`), with our
generated classes and protobuf runtime, in one process on one core.  The events figure of a
client is compared with this rate.
"""

from __future__ import annotations

import struct

from bench._common import now, spot_fields
from ctrader_twisted import messages as m

__all__ = ["DISTINCT_FRAMES", "build_frames", "measure_ceiling"]

#: Distinct pre-encoded events cycled through by a burst.
DISTINCT_FRAMES = 4096

_PREFIX = struct.Struct("!I")


def build_frames(distinct: int = DISTINCT_FRAMES) -> list[bytes]:
    """The burst's spot-event frames, length prefix included."""
    return [m.encode_frame(m.ProtoOASpotEvent(**spot_fields(i))) for i in range(distinct)]


def measure_ceiling(count: int, frames: list[bytes] | None = None) -> dict[str, object]:
    """Split and parse at least ``count`` frames from one contiguous buffer.

    :returns: ``rate`` (frames per second), ``frames`` parsed and the protobuf backend.
    """
    from google.protobuf.internal import api_implementation

    frames = frames if frames is not None else build_frames()
    stream = b"".join(frames)
    repeats = max(1, -(-count // len(frames)))
    envelope_from = m.ProtoMessage.FromString
    spot_from = m.ProtoOASpotEvent.FromString
    unpack = _PREFIX.unpack_from
    size = len(stream)
    checksum = 0
    started = now()
    for _ in range(repeats):
        offset = 0
        while offset < size:
            (length,) = unpack(stream, offset)
            end = offset + 4 + length
            envelope = envelope_from(stream[offset + 4 : end])
            checksum += spot_from(envelope.payload).bid
            offset = end
    elapsed = now() - started
    parsed = repeats * len(frames)
    return {
        "rate": parsed / elapsed,
        "frames": parsed,
        "protobuf_backend": api_implementation.Type(),
        "checksum": checksum,
    }
