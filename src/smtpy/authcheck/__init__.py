"""Checks on incoming mail: SPF, DKIM, DMARC and ARC, and what smtpy records of them.

- `spf`: RFC 7208 check_host(), asynchronous over `smtpy.dns.Lookups`
- `dkimverify`: every DKIM-Signature, keys fetched ahead (`keys`)
- `dmarc`: policy discovery (`lookup_policy`), alignment, evaluation
- `arc`: ARC chain validation (RFC 8617)
- `results`: the Authentication-Results field (RFC 8601)
- `fromrewrite`: when to rewrite From for DMARC, and the rewrite
- `inbound`: the end-of-DATA check that ties them together for `smtpy.receive`
- `seal`: the ARC set smtpy adds on delivery
"""
