"""Checks on incoming mail: limits, recipients, SPF, DKIM, DMARC, ARC, DNSBL and scanners."""
