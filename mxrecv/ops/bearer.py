# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's bearer token (C{[admin] token}): what a request that
changes something (anything but GET and HEAD) must carry as
C{Authorization: Bearer TOKEN}.

L{BearerToken.allows} is the check, for a resource that wants to decide
itself (L{BearerToken.matches} for a token it got otherwise, as the
inbox's requeue form does); L{TokenRequired} wraps a resource so that its
unsafe methods are refused with 401 without the token.
"""

from __future__ import annotations

import hmac
from http import HTTPStatus

from attrs import field, frozen
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

log = Logger()

SAFE_METHODS = frozenset({b"GET", b"HEAD"})


@frozen
class BearerToken:
    """
    The token, or none (C{""}): then every request is allowed, as on a
    loopback-only listener without one.
    """

    value: str = field(default="", repr=False)

    def allows(self, request: IRequest) -> bool:
        """
        Whether C{request} may do what it asks: a safe method, no token
        configured, or the token in its C{Authorization} header.
        """
        if not self.value or request.method in SAFE_METHODS:
            return True
        for header in request.requestHeaders.getRawHeaders(b"Authorization", []):
            scheme, _, credentials = header.partition(b" ")
            if scheme.lower() == b"bearer" and self.matches(credentials.strip()):
                return True
        return False

    def matches(self, presented: bytes) -> bool:
        """
        Whether C{presented} is the token (in constant time); never when no
        token is configured.
        """
        return bool(self.value) and hmac.compare_digest(presented, self.value.encode("utf-8"))

    def refuse(self, request: IRequest) -> bytes:
        """
        Answer C{request} 401, and log it (without what it sent).
        """
        client = getattr(request.getClientAddress(), "host", None)
        log.warn(
            "Refused admin {method} {path} from {client}: no valid bearer token",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            client=client,
        )
        request.setResponseCode(HTTPStatus.UNAUTHORIZED)
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="mxrecv"')
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"a valid bearer token ([admin] token) is required\n"


class TokenRequired(Resource):
    """
    C{wrapped}, whose methods other than GET and HEAD are refused with 401
    unless the request carries C{token}.

    @param selfChecking: children of C{wrapped} that check the token
        themselves (with L{BearerToken.allows} or L{BearerToken.matches}).
    """

    def __init__(
        self, wrapped: IResource, token: BearerToken, selfChecking: frozenset[bytes] = frozenset()
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._token = token
        self._selfChecking = selfChecking
        self.isLeaf = getattr(wrapped, "isLeaf", False)

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if name in self._selfChecking:
            return self._wrapped.getChildWithDefault(name, request)
        if not self._token.allows(request):
            return _Refused(self._token)
        return self._wrapped.getChildWithDefault(name, request)

    def render(self, request: IRequest) -> bytes | int:
        if not self._token.allows(request):
            return self._token.refuse(request)
        return self._wrapped.render(request)


class _Refused(Resource):
    isLeaf = True

    def __init__(self, token: BearerToken) -> None:
        super().__init__()
        self._token = token

    def render(self, request: IRequest) -> bytes:
        return self._token.refuse(request)
