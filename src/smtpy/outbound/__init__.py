"""Sending: prepare (From rewrite, DKIM, ARC), TLS policy, MX delivery and kept connections."""
