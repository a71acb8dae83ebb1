"""Per-request typing of ``Client.request`` (generated: do not edit).

Written by ``tools/gen_request_overloads.py`` from ``messages.RESPONSE_TYPES``; regenerate after
a schema change.  Each overload maps one request class to the class of its answer.
"""

from __future__ import annotations

from typing import Any, overload

from google.protobuf.message import Message
from twisted.internet.defer import Deferred

from . import messages as m

__all__ = ["TypedRequests"]


class TypedRequests:
    """Mixin giving :meth:`request` one typed signature per request class."""

    @overload
    def request(
        self,
        message: m.ProtoOAAccountAuthReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAAccountAuthRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAAccountLogoutReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAAccountLogoutRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAAmendOrderReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExecutionEvent]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAAmendPositionSLTPReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExecutionEvent]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAApplicationAuthReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAApplicationAuthRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAAssetClassListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAAssetClassListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAAssetListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAAssetListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOACancelOrderReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExecutionEvent]: ...

    @overload
    def request(
        self,
        message: m.ProtoOACashFlowHistoryListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOACashFlowHistoryListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAClosePositionReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExecutionEvent]: ...

    @overload
    def request(
        self,
        message: m.ProtoOADealListByPositionIdReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOADealListByPositionIdRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOADealListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOADealListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOADealOffsetListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOADealOffsetListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAExpectedMarginReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExpectedMarginRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetAccountListByAccessTokenReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetAccountListByAccessTokenRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetCtidProfileByTokenReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetCtidProfileByTokenRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetDynamicLeverageByIDReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetDynamicLeverageByIDRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetPositionUnrealizedPnLReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetPositionUnrealizedPnLRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetTickDataReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetTickDataRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAGetTrendbarsReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAGetTrendbarsRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAMarginCallListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAMarginCallListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAMarginCallUpdateReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAMarginCallUpdateRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOANewOrderReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAExecutionEvent]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAOrderDetailsReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAOrderDetailsRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAOrderListByPositionIdReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAOrderListByPositionIdRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAOrderListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAOrderListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAReconcileReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAReconcileRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOARefreshTokenReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOARefreshTokenRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASubscribeDepthQuotesReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASubscribeDepthQuotesRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASubscribeLiveTrendbarReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASubscribeLiveTrendbarRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASubscribeSpotsReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASubscribeSpotsRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASymbolByIdReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASymbolByIdRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASymbolCategoryListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASymbolCategoryListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASymbolsForConversionReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASymbolsForConversionRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOASymbolsListReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOASymbolsListRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOATraderReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOATraderRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAUnsubscribeDepthQuotesReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAUnsubscribeDepthQuotesRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAUnsubscribeLiveTrendbarReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAUnsubscribeLiveTrendbarRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAUnsubscribeSpotsReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAUnsubscribeSpotsRes]: ...

    @overload
    def request(
        self,
        message: m.ProtoOAVersionReq,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.ProtoOAVersionRes]: ...

    def request(
        self,
        message: Message,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[Any]:  # the overloads above are the public signature
        """Send ``message`` and return a Deferred for its answer.

        :param message: a request (any ``Proto...Req``); account-scoped requests name their
            account in ``ctidTraderAccountId``.
        :param timeout: seconds to wait for the answer once the frame is written
            (default: the client's ``request_timeout``).
        :param send_timeout: seconds the request may wait to be written, while the client
            is not ready or the rate limit holds it back (default: the client's
            ``send_timeout``).
        :returns: a Deferred that fires with the answer: the paired response message, or
            for a trading request the first ``ProtoOAExecutionEvent`` carrying its
            clientMsgId.  It fails with
            :class:`~ctrader_twisted.errors.OpenApiError` (or a subclass such as
            :class:`~ctrader_twisted.errors.OrderError`) when the server refuses it;
            :class:`~ctrader_twisted.errors.RequestTimeout` when a bound runs out
            (``sent`` says which one); :class:`~ctrader_twisted.errors.ConnectionLost`
            when the connection closes after the frame was written;
            :class:`~ctrader_twisted.errors.NotConnected` for a trading request made
            while the client is not ready, for any request while the client is stopped;
            :class:`~ctrader_twisted.errors.ApplicationAuthError` once the application
            credentials were refused.  Cancelling it withdraws the request.
        :raises TypeError: if ``message`` is not a request.
        :raises google.protobuf.message.EncodeError: if a required field is not set.
        """
        return self._submit_request(message, timeout, send_timeout)

    def _submit_request(
        self, message: Message, timeout: float | None, send_timeout: float | None
    ) -> Deferred[Message]:
        raise NotImplementedError
