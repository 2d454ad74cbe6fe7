"""Mail as data: addresses, SMTP DATA framing, header fields, the Received header and DSNs (pure)."""
