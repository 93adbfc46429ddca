# -*- test-case-name: tests.test_inbox_pages -*-
"""
Tokens that tie a form to the page that showed it (cross-site request
forgery): another site can make an operator's browser POST to the admin
listener, but cannot read the page, so cannot know the token.

Stateless: a token is an HMAC of the action and the message under a key
made at start-up, so there is nothing to store, and a page rendered
before a restart asks to be reloaded.
"""

from __future__ import annotations

import hashlib
import hmac
import os


class CsrfTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def token(self, action: str, name: str) -> str:
        message = f"{action}\x00{name}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, token: str, action: str, name: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token(action, name).encode())
