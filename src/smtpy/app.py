"""The ASGI application `smtpy api` serves: the JSON API and the dashboard, over one store;
and `serve`, which runs it on uvicorn until SIGTERM."""

from __future__ import annotations

import errno
import signal
import socket
from typing import Any

from fastapi import FastAPI

from smtpy import log
from smtpy.api.app import install as install_api
from smtpy.api.pool import Pool
from smtpy.config import Settings, mask_url
from smtpy.errors import ConfigError, SchemaOutdated, StoreMissing
from smtpy.store.db import SCHEMA_REVISION, Database, dialect, missing_store_message, sqlite_path
from smtpy.web.app import install as install_web

logger = log.get("smtpy.api")

# Seconds SIGTERM waits for requests in flight (systemd's TimeoutStopSec is 30 s).
DRAIN_SECONDS = 25


def check_store(url: str) -> None:
    """`StoreMissing` or `SchemaOutdated` (exit 2) unless the store is there and current.

    `smtpy api` never creates or migrates the store: `smtpy db upgrade` (or
    `smtpy serve`, for SQLite) does."""
    with Database(url, create=False, check_schema=False) as db:
        revision = db.schema_revision()
    if revision == SCHEMA_REVISION:
        return
    if revision is None and dialect(url) == "sqlite":
        raise StoreMissing(missing_store_message(sqlite_path(url), empty=True))
    raise SchemaOutdated(
        f"the store's schema is at revision {revision or '(none)'}, this smtpy needs "
        f"{SCHEMA_REVISION}: run `smtpy db upgrade`"
    )


def create_app(settings: Settings) -> FastAPI:
    """The application over the store named by `settings` (its schema must be current)."""
    check_store(settings.database_url)  # a missing or outdated store fails here, at start
    app = FastAPI(
        title="smtpy",
        summary="The JSON HTTP API of smtpy, a self-hosted mail forwarder.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = Pool(settings.database_url)
    install_api(app)
    install_web(app)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound socket for SMTPY_API_LISTEN; `ConfigError` (exit 2) when it is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"SMTPY_API_LISTEN: cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is in use by another program"
        else:
            reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} (SMTPY_API_LISTEN): {reason}; "
            "stop the other program or choose another address"
        ) from None
    return sock


def serve(settings: Settings) -> int:
    """Serve the application on SMTPY_API_LISTEN until SIGTERM; the exit code.

    SIGTERM stops accepting connections, lets the requests in flight finish (for
    `DRAIN_SECONDS` at most) and returns 0."""
    import logging

    import uvicorn

    app = create_app(settings)
    host, port = settings.api_listen
    sock = listen(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    # uvicorn's own lines are said by ours ("started", "stopping", "stopped", "request").
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                logger.info(
                    "started",
                    url=url,
                    public_url=settings.public_url,
                    store=mask_url(settings.database_url),
                )

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            logger.info("stopping", in_flight=len(self.server_state.tasks))
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        log_config=None,  # smtpy.log's handlers
        access_log=False,  # smtpy.api.middleware.AccessLog
        proxy_headers=False,  # smtpy.api.middleware.TrustedProxies decides
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )
    server = Server(config)
    # uvicorn puts the handler it found back after a graceful stop and raises the signal
    # again: with its own handler there, SIGTERM ends in exit 0 (and one that arrives
    # before uvicorn listens still stops it).
    previous: Any = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        app.state.pool.close()
    if not server.started:
        return 1
    logger.info("stopped")
    return 0
