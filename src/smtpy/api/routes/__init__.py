"""The API's routes, one module per resource of API.md; each exposes `router`."""

MODULES = (
    "auth",
    "me",
    "orgs",
    "invitations",
    "api_keys",
    "domains",
    "aliases",
    "messages",
    "stats",
    "audit",
    "billing",
    "webhooks",
    "destinations",
)
