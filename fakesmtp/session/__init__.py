"""The SMTP and LMTP sessions: one connection each, from banner to close.

``wire`` moves bytes (the only module that touches asyncio's transports and timers),
``profile`` holds a scenario's normal replies, ``runtime`` what all sessions of a server
share, ``auth`` the SASL mechanisms, ``smtp`` the verbs and the one place a decision is
applied, ``lmtp`` the LMTP differences.
"""
