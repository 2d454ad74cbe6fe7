"""`smtpy api`: the JSON HTTP API under /api/v1 (FastAPI on uvicorn), a shell over the
core services in `smtpy.admin` and `smtpy.accounts`. The contract is API.md."""
