"""Tokens and the session-level requests: application and account authorization, account
lists, the cTID profile, logout, token refresh and version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import messages as m
from .catalogue import ACCOUNTS, CTID_USER_ID
from .config import SandboxConfig
from .market import mix64

if TYPE_CHECKING:
    from .session import Handler, Session

__all__ = ["ACCESS_TOKEN_LIFETIME", "HANDLERS", "TokenStore"]

#: Seconds an access token lives (as documented for the real service).
ACCESS_TOKEN_LIFETIME: Final = 2_628_000


class TokenStore:
    """Valid access tokens and single-use refresh tokens, shared by all connections."""

    def __init__(self, config: SandboxConfig) -> None:
        self._seed = config.seed
        self._issued = 0
        self._access = {config.access_token}
        #: refresh token -> the access token issued with it.
        self._pairs = {config.refresh_token: config.access_token}

    def __repr__(self) -> str:
        return f"<TokenStore valid={len(self._access)}>"

    def is_valid(self, access_token: str) -> bool:
        """Whether ``access_token`` is currently valid."""
        return access_token in self._access

    def refresh(self, refresh_token: str) -> tuple[str, str, str] | None:
        """Use ``refresh_token`` once.

        :returns: ``(old access token, new access token, new refresh token)``, or ``None`` if
            the refresh token is unknown or already used.
        """
        old_access = self._pairs.pop(refresh_token, None)
        if old_access is None:
            return None
        self._access.discard(old_access)
        self._issued += 1
        access = f"sandbox-access-{mix64(self._seed, self._issued, 1, 0):016x}"
        refresh = f"sandbox-refresh-{mix64(self._seed, self._issued, 2, 0):016x}"
        self._access.add(access)
        self._pairs[refresh] = access
        return old_access, access, refresh


def _application_auth(session: Session, req: m.ProtoOAApplicationAuthReq, cmid: str | None) -> None:
    config = session.config
    if session.app_authorized:
        session.error(
            "CH_CLIENT_ALREADY_AUTHENTICATED", "Client is trying to authenticate twice", cmid
        )
        return
    if req.clientId != config.client_id or req.clientSecret != config.client_secret:
        session.error("CH_CLIENT_AUTH_FAILURE", "clientId or clientSecret is incorrect", cmid)
        session.close()
        return
    session.authorize_application()
    session.reply(m.ProtoOAApplicationAuthRes(), cmid)


def _invalid_token(session: Session, cmid: str | None, account_id: int | None = None) -> None:
    session.error(
        "CH_ACCESS_TOKEN_INVALID", "Access token is invalid or expired", cmid, account_id=account_id
    )


def _account_list(
    session: Session, req: m.ProtoOAGetAccountListByAccessTokenReq, cmid: str | None
) -> None:
    if not session.factory.tokens.is_valid(req.accessToken):
        _invalid_token(session, cmid)
        return
    res = m.ProtoOAGetAccountListByAccessTokenRes(
        accessToken=req.accessToken, permissionScope=m.ProtoOAClientPermissionScope.SCOPE_TRADE
    )
    for spec in ACCOUNTS.values():
        res.ctidTraderAccount.add(
            ctidTraderAccountId=spec.account_id,
            isLive=False,
            traderLogin=spec.login,
            brokerTitleShort="Sandbox",
        )
    session.reply(res, cmid)


def _profile(session: Session, req: m.ProtoOAGetCtidProfileByTokenReq, cmid: str | None) -> None:
    if not session.factory.tokens.is_valid(req.accessToken):
        _invalid_token(session, cmid)
        return
    profile = m.ProtoOACtidProfile(userId=CTID_USER_ID)
    session.reply(m.ProtoOAGetCtidProfileByTokenRes(profile=profile), cmid)


def _account_auth(session: Session, req: m.ProtoOAAccountAuthReq, cmid: str | None) -> None:
    account_id = req.ctidTraderAccountId
    if not session.factory.tokens.is_valid(req.accessToken):
        _invalid_token(session, cmid, account_id)
        return
    if account_id not in ACCOUNTS:
        text = f"Trading account {account_id} is not found"
        session.error("CH_CTID_TRADER_ACCOUNT_NOT_FOUND", text, cmid, account_id=account_id)
        return
    if account_id in session.accounts:
        text = "Trading account is already authorized in this channel"
        session.error("ALREADY_LOGGED_IN", text, cmid, account_id=account_id)
        return
    session.accounts[account_id] = req.accessToken
    session.reply(m.ProtoOAAccountAuthRes(ctidTraderAccountId=account_id), cmid)


def _logout(session: Session, req: m.ProtoOAAccountLogoutReq, cmid: str | None) -> None:
    account_id = req.ctidTraderAccountId
    session.reply(m.ProtoOAAccountLogoutRes(ctidTraderAccountId=account_id), cmid)
    session.factory.end_account_session(session, account_id)
    session.reply(m.ProtoOAAccountDisconnectEvent(ctidTraderAccountId=account_id), None)


def _refresh(session: Session, req: m.ProtoOARefreshTokenReq, cmid: str | None) -> None:
    issued = session.factory.tokens.refresh(req.refreshToken)
    if issued is None:
        session.error("CH_ACCESS_TOKEN_INVALID", "Refresh token is invalid or already used", cmid)
        return
    old_access, access, refresh = issued
    res = m.ProtoOARefreshTokenRes(
        accessToken=access,
        tokenType="bearer",
        expiresIn=ACCESS_TOKEN_LIFETIME,
        refreshToken=refresh,
    )
    session.reply(res, cmid)
    session.factory.invalidate_token(old_access, "Access token refreshed")


def _version(session: Session, req: m.ProtoOAVersionReq, cmid: str | None) -> None:
    session.reply(m.ProtoOAVersionRes(version=session.config.version), cmid)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOAApplicationAuthReq: _application_auth,
    m.ProtoOAGetAccountListByAccessTokenReq: _account_list,
    m.ProtoOAGetCtidProfileByTokenReq: _profile,
    m.ProtoOAAccountAuthReq: _account_auth,
    m.ProtoOAAccountLogoutReq: _logout,
    m.ProtoOARefreshTokenReq: _refresh,
    m.ProtoOAVersionReq: _version,
}
