"""Sending: what happens to a queued message on its way out.

prepare (From rewrite, DKIM, ARC) and signers (the keys that sign); target (the
`Target` protocol the scheduler hands prepared messages to) and deliver (the
Target the daemon runs, which picks one per destination); for SMTP: mx (where
a domain's mail goes), tls_policy (MTA-STS, required TLS), smtp_session (one
session over aiosmtplib), smtp_replies (what a reply means), connections
(sessions kept open) and smtp_target (the SMTP Target that ties them together).
"""
