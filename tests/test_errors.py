"""errors.error_from_message: every server error shape becomes the right exception."""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.errors import (
    AccountAuthError,
    ApplicationAuthError,
    OpenApiError,
    OrderError,
    RateLimited,
    error_from_message,
)

END = datetime(2026, 11, 28, 22, 0, tzinfo=timezone.utc)
END_S = int(END.timestamp())


class ErrorFromMessageTests(SynchronousTestCase):
    def test_oa_error_fields(self) -> None:
        error = error_from_message(
            m.ProtoOAErrorRes(
                errorCode="SERVER_IS_UNDER_MAINTENANCE",
                description="back soon",
                ctidTraderAccountId=42,
                maintenanceEndTimestamp=END_S,  # seconds in ProtoOAErrorRes
            )
        )
        assert error is not None
        self.assertIs(type(error), OpenApiError)
        self.assertEqual(
            (error.code, error.description, error.account_id, error.payload_type),
            ("SERVER_IS_UNDER_MAINTENANCE", "back soon", 42, 2142),
        )
        self.assertEqual(error.maintenance_end, END)
        self.assertIsNone(error.retry_after)

    def test_common_error_maintenance_is_in_milliseconds(self) -> None:
        error = error_from_message(
            m.ProtoErrorRes(
                errorCode="SERVER_IS_UNDER_MAINTENANCE", maintenanceEndTimestamp=END_S * 1000
            )
        )
        assert error is not None
        self.assertEqual(error.maintenance_end, END)
        self.assertEqual(error.payload_type, 50)
        self.assertIsNone(error.account_id)

    def test_absent_optional_fields_are_none(self) -> None:
        error = error_from_message(m.ProtoOAErrorRes(errorCode="UNKNOWN_ERROR"))
        assert error is not None
        self.assertEqual((error.description, error.account_id), ("", None))
        self.assertIsNone(error.maintenance_end)
        self.assertIsNone(error.retry_after)

    def test_rate_limit_codes_carry_retry_after(self) -> None:
        for code in ("REQUEST_FREQUENCY_EXCEEDED", "BLOCKED_PAYLOAD_TYPE"):
            error = error_from_message(m.ProtoOAErrorRes(errorCode=code, retryAfter=3))
            self.assertIsInstance(error, RateLimited)
            assert error is not None
            self.assertEqual(error.retry_after, 3.0)

    def test_auth_codes_pick_their_classes(self) -> None:
        cases: dict[str, type[OpenApiError]] = {
            "CH_CLIENT_AUTH_FAILURE": ApplicationAuthError,
            "CH_ACCESS_TOKEN_INVALID": AccountAuthError,
            "CH_CTID_TRADER_ACCOUNT_NOT_FOUND": AccountAuthError,
            "ACCOUNT_NOT_AUTHORIZED": AccountAuthError,
            "SYMBOL_NOT_FOUND": OpenApiError,
        }
        for code, cls in cases.items():
            self.assertIs(type(error_from_message(m.ProtoOAErrorRes(errorCode=code))), cls, code)
            self.assertIs(type(error_from_message(m.ProtoErrorRes(errorCode=code))), cls, code)

    def test_order_error_event(self) -> None:
        error = error_from_message(
            m.ProtoOAOrderErrorEvent(
                ctidTraderAccountId=7,
                errorCode="NOT_ENOUGH_MONEY",
                description="margin",
                orderId=11,
                positionId=12,
            )
        )
        self.assertIsInstance(error, OrderError)
        assert isinstance(error, OrderError)
        self.assertEqual(
            (error.code, error.account_id, error.order_id, error.position_id, error.payload_type),
            ("NOT_ENOUGH_MONEY", 7, 11, 12, 2132),
        )

    def test_rejected_execution_events(self) -> None:
        for execution_type, kind in (
            (m.ProtoOAExecutionType.ORDER_REJECTED, "ORDER_REJECTED"),
            (m.ProtoOAExecutionType.ORDER_CANCEL_REJECTED, "ORDER_CANCEL_REJECTED"),
        ):
            event = m.ProtoOAExecutionEvent(ctidTraderAccountId=7, executionType=execution_type)
            error = error_from_message(event)
            assert isinstance(error, OrderError)
            self.assertEqual((error.code, error.description), (kind, kind))
            self.assertIsNone(error.order_id)
            event.errorCode = "TRADING_BAD_VOLUME"
            event.order.orderId = 99
            event.order.tradeData.symbolId = 1
            error = error_from_message(event)
            assert isinstance(error, OrderError)
            self.assertEqual(
                (error.code, error.order_id, error.payload_type), ("TRADING_BAD_VOLUME", 99, 2126)
            )

    def test_other_messages_are_not_errors(self) -> None:
        filled = m.ProtoOAExecutionEvent(
            ctidTraderAccountId=7, executionType=m.ProtoOAExecutionType.ORDER_FILLED
        )
        self.assertIsNone(error_from_message(filled))
        self.assertIsNone(error_from_message(m.ProtoOAVersionRes(version="91")))
        self.assertIsNone(error_from_message(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1)))

    def test_impossible_maintenance_end_reads_as_absent(self) -> None:
        messages = [
            m.ProtoOAErrorRes(errorCode="X", maintenanceEndTimestamp=-(2**62)),
            m.ProtoOAErrorRes(errorCode="X", maintenanceEndTimestamp=2**62),
            m.ProtoErrorRes(errorCode="X", maintenanceEndTimestamp=2**63),
        ]
        for message in messages:
            error = error_from_message(message)
            assert error is not None
            self.assertIsNone(error.maintenance_end)
            self.assertEqual(error.code, "X")
