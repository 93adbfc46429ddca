from twisted.application.service import ServiceMaker

mxrecv = ServiceMaker(
    "mxrecv",
    "mxrecv.tap",
    "Receive SMS and MMS callbacks from MX Telecom into a Maildir-like spool.",
    "mxrecv",
)
