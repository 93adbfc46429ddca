"""
The message, pure: the L{model.Message} value and its JSON, the callback's
parameters validated into one (L{params}), MX Telecom's dates (L{dates}) and
texts (L{text}).  Nothing here does I/O.
"""
