"""
The inbox: C{/inbox} on the admin listener, a page per message, and its
parts served inert.  L{mxrecv.ops.inbox.service.buildInbox} puts it together.

    summary   pure: a message.json as a row of the list
    query     pure: the filters and paging of a request
    media     pure: how each part is shown, SMIL order
    catalog   blocking: the SQLite catalog of the spool (state/inbox.sqlite)
    files     blocking: a message's files, opened without leaving its directory
    pages     twisted.web.template elements
    csrf      the requeue form's token
    resource  the resources
    inbox     what the pages ask of the spool, answered from a thread pool
    service   the builder and its service (thread pool, catalog warm-up)
"""
