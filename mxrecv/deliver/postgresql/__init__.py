"""
Delivery into PostgreSQL (C{[deliver] postgresql}): each message and its
parts as rows of a documented schema, once per id however many mxrecv nodes
deliver it, with C{NOTIFY mxrecv_message} after each commit.

    schema.py     the tables, their migrations and the start-up check
    sanitise.py   what PostgreSQL text cannot hold, replaced and recorded
    row.py        message.json as the typed columns of mxrecv_message
    copyformat.py the framing of binary COPY, to stream parts' bytes
    store.py      the transaction that stores one message (blocking)
    connect.py    connection settings: conninfo, password, timeouts
    pool.py       connections used from Twisted through a thread pool
    target.py     the delivery target (L{mxrecv.deliver.interfaces.ITarget})

psycopg (3) is needed by C{connect}, C{pool}, C{schema}, C{store} and
C{target} only: C{pip install 'mxrecv[postgresql]'}.
"""
