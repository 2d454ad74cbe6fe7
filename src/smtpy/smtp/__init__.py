"""Inbound SMTP: the aiosmtpd server and the session handler that runs the checks."""
