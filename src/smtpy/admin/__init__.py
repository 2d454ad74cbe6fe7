"""Operations on the store that every shell shares: CLI, daemon and HTTP API.

Each function takes the database explicitly, checks its input completely before
writing anything, and raises `smtpy.errors` types the shells translate.
"""
