"""The framing protocol: split frames, several per chunk, oversize prefixes, bad payloads."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.errors import FrameTooLarge, MalformedMessage
from ctrader_twisted.messages._codec import _decode_general
from ctrader_twisted.protocol import DEFAULT_MAX_LENGTH, OpenApiProtocol

from .test_codec import _fields, _outcome


class Recorder:
    """A MessageHandler that keeps what it is told."""

    def __init__(self) -> None:
        self.made = 0
        self.envelopes: list[m.Envelope] = []
        self.errors: list[MalformedMessage] = []
        self.lost: list[Failure] = []

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.made += 1

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        self.envelopes.append(envelope)

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        self.errors.append(error)

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.lost.append(reason)


def connect(
    max_length: int = DEFAULT_MAX_LENGTH,
) -> tuple[OpenApiProtocol, Recorder, StringTransport, Clock]:
    clock = Clock()
    recorder = Recorder()
    protocol = OpenApiProtocol(recorder, clock, max_length=max_length)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, recorder, transport, clock


SAMPLE = [
    m.encode_frame(m.ProtoOAVersionRes(version="91"), "a"),
    m.encode_frame(m.ProtoOASpotEvent(ctidTraderAccountId=7, symbolId=1, bid=110000), None),
    m.encode_frame(m.ProtoHeartbeatEvent()),
    m.encode_frame(m.ProtoOAErrorRes(errorCode="CH_ACCESS_TOKEN_INVALID"), "b"),
]
STREAM = b"".join(SAMPLE)


def _decoded(recorder: Recorder) -> list[tuple[int, str | None, bytes]]:
    result = []
    for envelope in recorder.envelopes:
        message = envelope.message
        assert not isinstance(message, m.UnknownMessage)
        result.append((envelope.payload_type, envelope.client_msg_id, message.SerializeToString()))
    return result


EXPECTED = [
    (2105, "a", m.ProtoOAVersionRes(version="91").SerializeToString()),
    (
        2131,
        None,
        m.ProtoOASpotEvent(ctidTraderAccountId=7, symbolId=1, bid=110000).SerializeToString(),
    ),
    (51, None, m.ProtoHeartbeatEvent().SerializeToString()),
    (2142, "b", m.ProtoOAErrorRes(errorCode="CH_ACCESS_TOKEN_INVALID").SerializeToString()),
]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_split_at_arbitrary_boundaries(cuts: list[int]) -> None:
    protocol, recorder, _, _ = connect()
    points = sorted(set(cuts) | {0, len(STREAM)})
    for start, end in itertools.pairwise(points):
        protocol.dataReceived(STREAM[start:end])
    assert _decoded(recorder) == EXPECTED
    assert recorder.errors == []


class FramingTests(SynchronousTestCase):
    def test_one_byte_feeds(self) -> None:
        protocol, recorder, _, _ = connect()
        for i in range(len(STREAM)):
            protocol.dataReceived(STREAM[i : i + 1])
        self.assertEqual(_decoded(recorder), EXPECTED)

    def test_several_frames_in_one_chunk(self) -> None:
        protocol, recorder, _, _ = connect()
        protocol.dataReceived(STREAM)
        self.assertEqual(_decoded(recorder), EXPECTED)
        self.assertEqual(protocol.frames_received, 4)

    def test_zero_length_frame_is_skipped(self) -> None:
        protocol, recorder, transport, _ = connect()
        protocol.dataReceived(struct.pack("!I", 0) + SAMPLE[0])
        self.assertEqual(_decoded(recorder), EXPECTED[:1])
        self.assertFalse(transport.disconnecting)

    def test_oversize_length_prefix_closes_with_logged_error(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, recorder, transport, _ = connect(max_length=1000)
        protocol.dataReceived(SAMPLE[0] + struct.pack("!I", 1001) + b"x" * 50)
        self.assertEqual(_decoded(recorder), EXPECTED[:1])
        self.assertTrue(transport.disconnecting)
        errors = [e for e in observer if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0]["error"], FrameTooLarge)
        protocol.dataReceived(SAMPLE[1])  # ignored: framing is lost
        self.assertEqual(len(recorder.envelopes), 1)
        protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertIsInstance(recorder.lost[0].value, FrameTooLarge)

    def test_default_limit_is_at_least_16_mib(self) -> None:
        protocol, _, _, _ = connect()
        self.assertGreaterEqual(protocol.MAX_LENGTH, 16 * 1024 * 1024)
        big = m.ProtoOAGetTrendbarsRes(ctidTraderAccountId=1, period=1, symbolId=1)
        for i in range(150_000):  # about 1.5 MB of bars, more than Twisted's default allows
            big.trendbar.add(low=100000 + i, utcTimestampInMinutes=i, volume=3)
        frame = m.encode_frame(big, "big")
        protocol.dataReceived(frame)
        self.assertEqual(protocol.handler.envelopes[0].message, big)  # type: ignore[attr-defined]

    def test_large_frame_in_many_small_reads(self) -> None:
        protocol, recorder, _, _ = connect()
        frame = m.encode_frame(m.ProtoOAVersionRes(version="x" * 2_000_000))
        for i in range(0, len(frame), 4096):
            protocol.dataReceived(frame[i : i + 4096])
        self.assertEqual(len(recorder.envelopes), 1)

    def test_unknown_payload_type_is_delivered_and_reading_goes_on(self) -> None:
        protocol, recorder, _, _ = connect()
        unknown = m.ProtoMessage(payloadType=4242, payload=b"raw", clientMsgId="u")
        body = unknown.SerializeToString()
        protocol.dataReceived(struct.pack("!I", len(body)) + body + SAMPLE[0])
        first = recorder.envelopes[0]
        self.assertEqual(first.message, m.UnknownMessage(4242, b"raw"))
        self.assertEqual(first.client_msg_id, "u")
        self.assertEqual(len(recorder.envelopes), 2)

    def test_corrupt_payload_is_reported_and_reading_goes_on(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, recorder, transport, _ = connect()
        bad = m.ProtoMessage(payloadType=2131, payload=b"\xff\xff").SerializeToString()
        protocol.dataReceived(struct.pack("!I", len(bad)) + bad + SAMPLE[0])
        self.assertEqual(len(recorder.errors), 1)
        self.assertEqual(recorder.errors[0].payload_type, 2131)
        self.assertEqual(_decoded(recorder), EXPECTED[:1])
        self.assertFalse(transport.disconnecting)
        self.assertTrue(any(e["log_level"].name == "warn" for e in observer))

    def test_handler_exception_is_logged_not_raised(self) -> None:
        protocol, recorder, _, _ = connect()

        def boom(protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
            raise ValueError("listener bug")

        recorder.envelope_received = boom  # type: ignore[method-assign]
        protocol.dataReceived(STREAM)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 4)

    def test_send_writes_a_frame_and_stamps_time(self) -> None:
        protocol, _, transport, clock = connect()
        clock.advance(5)
        protocol.send(m.ProtoOAVersionReq(), "v1")
        written = transport.value()
        (length,) = struct.unpack("!I", written[:4])
        self.assertEqual(length, len(written) - 4)
        envelope = m.decode_envelope(written[4:])
        self.assertEqual((envelope.payload_type, envelope.client_msg_id), (2104, "v1"))
        self.assertEqual(protocol.last_sent, 5)
        self.assertEqual(protocol.frames_sent, 1)

    def test_last_received_follows_the_clock(self) -> None:
        protocol, _, _, clock = connect()
        clock.advance(12)
        protocol.dataReceived(SAMPLE[2][:3])
        self.assertEqual(protocol.last_received, 12)

    def test_connection_events_reach_the_handler(self) -> None:
        protocol, recorder, transport, _ = connect()
        self.assertEqual(recorder.made, 1)
        self.assertTrue(protocol.connected_now)
        protocol.close()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionError("bye")))
        self.assertIsInstance(recorder.lost[0].value, ConnectionError)
        self.assertFalse(protocol.connected_now)


class FastLaneRecorder(Recorder):
    """A Recorder with the fast lane for plain frames; it notes which frames took it."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = 0

    def event_received(
        self, protocol: OpenApiProtocol, payload_type: int, message: Message
    ) -> None:
        self.fast += 1
        self.envelopes.append(m.Envelope(payload_type, None, message))


class Forwarder:
    """Wraps a handler and forwards what it does not define (as test taps do)."""

    def __init__(self, inner: Recorder) -> None:
        self.inner = inner
        self.seen = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        self.seen += 1
        self.inner.envelope_received(protocol, envelope)


class FastLaneTests(SynchronousTestCase):
    def test_plain_frames_take_the_fast_lane(self) -> None:
        recorder = FastLaneRecorder()
        protocol = OpenApiProtocol(recorder, Clock())
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(STREAM)
        self.assertEqual(_decoded(recorder), EXPECTED)
        self.assertEqual(recorder.fast, 1)  # the spot event; the others have ids or 1-byte types

    def test_forwarding_wrapper_keeps_every_frame(self) -> None:
        recorder = FastLaneRecorder()
        wrapper = Forwarder(recorder)
        protocol = OpenApiProtocol(wrapper, Clock())
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(STREAM)
        self.assertEqual(wrapper.seen, 4)
        self.assertEqual(recorder.fast, 0)

    def test_fast_lane_handler_exception_is_logged_not_raised(self) -> None:
        class Failing(FastLaneRecorder):
            def event_received(self, protocol: OpenApiProtocol, pt: int, message: Message) -> None:
                raise ValueError("listener bug")

        failing = Failing()
        protocol = OpenApiProtocol(failing, Clock())
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(STREAM + STREAM)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)
        self.assertEqual(len(failing.envelopes), 6)
        self.assertEqual(protocol.frames_received, 8)


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(
        st.sampled_from(SAMPLE)
        | st.binary(max_size=30).map(lambda body: struct.pack("!I", len(body)) + body),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_fast_lane_sees_what_the_envelope_path_sees(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    results = []
    for handler in (Recorder(), FastLaneRecorder()):
        protocol = OpenApiProtocol(handler, Clock())
        protocol.makeConnection(StringTransport())
        for start, end in itertools.pairwise(points):
            protocol.dataReceived(stream[start:end])
        results.append(
            (
                [(e.payload_type, e.client_msg_id, repr(e.message)) for e in handler.envelopes],
                [str(error) for error in handler.errors],
                protocol.frames_received,
            )
        )
    assert results[0] == results[1]


class Outcomes(Recorder):
    """Notes every decoded frame and every decode error, in order, as ``_outcome`` shows them."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[tuple[object, ...]] = []

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        self.outcomes.append(_outcome(lambda: envelope))

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        self.outcomes.append(_outcome(_raise, error))


class FastOutcomes(Outcomes):
    def event_received(
        self, protocol: OpenApiProtocol, payload_type: int, message: Message
    ) -> None:
        self.envelope_received(protocol, m.Envelope(payload_type, None, message))


def _raise(error: MalformedMessage) -> m.Envelope:
    raise error


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(_fields(), max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_framing_loop_decodes_as_the_general_decoder(bodies: list[bytes], cuts: list[int]) -> None:
    """The loop's inline check of plain frames against the general decoder, frame by frame,
    on hostile envelopes, with and without a fast lane, however the stream is cut."""
    expected = [_outcome(_decode_general, body, False) for body in bodies if body]
    stream = b"".join(struct.pack("!I", len(body)) + body for body in bodies)
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    for handler in (Outcomes(), FastOutcomes()):
        protocol = OpenApiProtocol(handler, Clock())
        protocol.makeConnection(StringTransport())
        for start, end in itertools.pairwise(points):
            protocol.dataReceived(stream[start:end])
        assert handler.outcomes == expected
        assert protocol.frames_received == len(bodies)


class Pausing(FastLaneRecorder):
    """Pauses the protocol (as a flow-controlled consumer would) after each fast-lane frame."""

    def event_received(
        self, protocol: OpenApiProtocol, payload_type: int, message: Message
    ) -> None:
        super().event_received(protocol, payload_type, message)
        protocol.pauseProducing()


class PauseTests(SynchronousTestCase):
    """As with Twisted's Int32StringReceiver: no frame is delivered while paused."""

    def test_pause_in_a_handler_stops_the_loop_until_resumed(self) -> None:
        handler = Pausing()
        protocol = OpenApiProtocol(handler, Clock())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(STREAM)
        self.assertEqual(len(handler.envelopes), 2)  # up to the spot event, then paused
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(protocol.frames_received, 2)
        protocol.resumeProducing()  # Twisted's resume feeds b"" to go on with the buffer
        self.assertEqual(_decoded(handler), EXPECTED)
        self.assertEqual(protocol.frames_received, 4)

    def test_paused_before_data_delivers_nothing(self) -> None:
        protocol, recorder, _, _ = connect()
        protocol.pauseProducing()
        protocol.dataReceived(STREAM)
        self.assertEqual(recorder.envelopes, [])
        protocol.resumeProducing()
        self.assertEqual(_decoded(recorder), EXPECTED)
