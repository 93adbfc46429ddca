# -*- test-case-name: tests.test_deliver_webhook -*-
"""
Signed webhooks as the Standard Webhooks specification defines them
(U{https://www.standardwebhooks.com/}), so that an application can check
that a POST came from its mxrecv, and came once:

    webhook-id          the message's id (L{mxrecv.deliver.identity})
    webhook-timestamp   when it was sent, in POSIX seconds
    webhook-signature   "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body))

The key is a C{whsec_} secret: C{whsec_} and the key's bytes in base64, as
the specification's libraries (and C{mxrecv webhook-secret}) make them.
The body is signed as it streams (L{Signing}), so that a large MMS never
has to be held whole.  What a secret file may hold is the configuration's
to say (L{mxrecv.config.parseWebhookSecret}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from mxrecv.config import WEBHOOK_SECRET_PREFIX
from mxrecv.config import parseWebhookSecret as parseSecret

#: The size of the keys L{newSecret} makes.
KEY_SIZE = 32

__all__ = ["KEY_SIZE", "Signing", "newSecret", "parseSecret"]


def newSecret(key: bytes | None = None) -> str:
    """
    A new C{whsec_} secret (L{parseSecret} reads it), of C{key} or of
    L{KEY_SIZE} random bytes.
    """
    if key is None:
        key = os.urandom(KEY_SIZE)
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(key).decode("ascii")


class Signing:
    """
    The signature of one request, as its body goes by (L{update}).
    """

    def __init__(self, key: bytes, webhookId: str, timestamp: int) -> None:
        self._mac = hmac.new(key, f"{webhookId}.{timestamp}.".encode("ascii"), hashlib.sha256)

    def update(self, data: bytes) -> None:
        self._mac.update(data)

    def signature(self) -> str:
        """
        The C{webhook-signature} value of the body so far.
        """
        return "v1," + base64.b64encode(self._mac.digest()).decode("ascii")
