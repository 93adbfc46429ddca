# -*- test-case-name: tests.test_spool -*-
"""
The spool's names: every directory and file that mxrecv makes under
C{[spool] dir}.  The layout is mxrecv's public interface with the customer's
application (documented in the README): these names do not change.

    tmp/                work in progress, emptied at start-up
    new/NAME/           complete messages; each appears atomically
    cur/                the application's; mxrecv never touches it
    pending/NAME/       MMS accepted but not complete yet (internal)
    failed/NAME/        what could not be completed, with the reason
    state/              mxrecv's own files (state/delivered/TARGET/NAME and
                        state/undeliverable/TARGET/NAME: delivery records)

and in a message's directory C{message.json}, C{mms.zip}, C{parts/} and,
while a GET-mode MMS is being retrieved, C{retrieve.json}.
"""

TMP = "tmp"
NEW = "new"
CUR = "cur"
PENDING = "pending"
FAILED = "failed"
STATE = "state"

#: Every directory of the spool, made when it is opened.
DIRECTORIES = (TMP, NEW, CUR, PENDING, FAILED, STATE)

# In a message's directory.
MESSAGE_JSON = "message.json"
MMS_ZIP = "mms.zip"
PARTS = "parts"
RETRIEVE_JSON = "retrieve.json"
#: All that a message's directory in new/ or failed/ may hold: anything else
#: (C{retrieve.json}, a partial download, a half-written replacement) is
#: internal and never moved there.
MESSAGE_ENTRIES = frozenset({MESSAGE_JSON, MMS_ZIP, PARTS})

# In state/.
SEEN = "seen"
LOCK = "lock"
DELIVERED = "delivered"
UNDELIVERABLE = "undeliverable"
