"""Accounts: the people and keys that use the HTTP API and the dashboard.

Users belong to organizations through memberships with a role; they sign in
with a password (argon2id) and, if they enrolled, a TOTP code; browsers keep a
server-side session, scripts use an organization's API key. Every change any
shell makes is written to the audit log with the actor that made it.

These are core services like `smtpy.admin`: the CLI, the API and the
dashboard call them and never decide a rule themselves.
"""
