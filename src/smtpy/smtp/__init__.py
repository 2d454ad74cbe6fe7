"""Inbound SMTP: the aiosmtpd server adaptation (`server`), the session handler that runs
the checks and hands mail to the queue (`handler`), and every reply smtpy sends (`replies`)."""
