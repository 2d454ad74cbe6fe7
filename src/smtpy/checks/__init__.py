"""Checks on incoming mail, one small protocol per stage (`stages`): limits, recipients,
SPF, DKIM, DMARC, ARC (`authentication`), DNSBL and scanners, one file each."""
