"""The web dashboard: server-rendered pages (Jinja2 + htmx) over the core services."""
