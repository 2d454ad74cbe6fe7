"""Operations on the store that every shell shares: CLI, daemon and HTTP API.

The conventions, as in full-stack-fastapi-template's `crud.py`:

- Arguments are keyword-only; the database (`db`) and the acting
  organization (`org`, its id: see `organizations`) are explicit. Listings
  and lookups see only that organization's domains, aliases, keys, queued
  mail, log events and figures.
- Inputs and results are pydantic models in families per entity:
  `DomainCreate` / `DomainUpdate` / `DomainPublic`, `AliasCreate` /
  `AliasUpdate` / `AliasPublic`, `KeyCreate` / `KeyPublic`, ... A `…Public`
  model is exactly what `--json` prints and the API will return: no private
  key, no internal id leaks through it.
- Input is checked completely before anything is written; errors are
  `smtpy.errors` types (the store itself raises `Conflict` and `NotFound`),
  which each shell translates once.

The few functions the daemon calls on its hot path (`aliases.domain_rules`,
`keys.signing_keys`, `srs_secret.stored_srs_secret`) serve every organization
and return what the pipeline needs, not public models.
"""
