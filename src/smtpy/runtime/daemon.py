"""`smtpy serve`: inbound SMTP and delivery workers on one asyncio loop.

Start-up: open the store (a SQLite store is created or migrated, an outdated
PostgreSQL schema refused), bind every SMTPY_LISTEN address, take the node's
name (refused while a live node holds it: `smtpy.queue.nodes`), and only then,
certain to be the node, return its interrupted deliveries to the queue; start
the workers, serve, then tell systemd we are ready. A start that fails (an
address in use, a name in use) changes nothing in the queue. SIGTERM/SIGINT: stop accepting, let sessions and
deliveries finish for a few seconds, return what is still in flight to the
queue, exit 0. SIGHUP: reload DKIM keys, alias rules and the TLS certificate
without dropping sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from smtpy import log
from smtpy.config import Settings
from smtpy.errors import ConfigError, SmtpyError
from smtpy.queue.nodes import NodeInfo
from smtpy.queue.writer import StoreThread
from smtpy.route.aliases import DomainRules
from smtpy.route.srs import SRS
from smtpy.runtime import listeners
from smtpy.runtime.watcher import PROCESS_VAR, notify_systemd
from smtpy.store.db import Database

if TYPE_CHECKING:
    from smtpy.checks.authentication import OurNames
    from smtpy.runtime.metrics_server import MetricsServer

logger = log.get(__name__)

RULES_TTL = 2.0  # seconds an alias change may take to reach a running daemon
STOP_GRACE = 10.0


class RuleCache:
    """Alias rules per domain, read through the reader thread and kept for `RULES_TTL`."""

    def __init__(self, store: StoreThread, *, ttl: float = RULES_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[str, tuple[float, DomainRules | None]] = {}

    def clear(self) -> None:
        self._cache.clear()

    async def get(self, domain: str) -> DomainRules | None:
        now = time.monotonic()
        hit = self._cache.get(domain)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        from smtpy.admin.aliases import domain_rules

        rules = await self._store.call(lambda db: domain_rules(db, domain))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[domain] = (now, rules)
        return rules


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The inbound STARTTLS context (TLS 1.2 and newer), or None without a certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load SMTPY_TLS_CERT/SMTPY_TLS_KEY: {exc}") from None
    return context


def _inbound_checker(settings: Settings, lookups: Any) -> Any:
    """The end-of-DATA SPF/DKIM/DMARC/ARC check, or None when SMTPY_AUTH_CHECKS is off."""
    if not settings.auth_checks:
        return None
    from smtpy.checks.authentication import AuthPolicy, InboundChecker

    return InboundChecker(
        lookups,
        AuthPolicy(
            hostname=settings.hostname,
            dmarc_reject=settings.dmarc_reject,
            trusted_sealers=frozenset(settings.arc_trusted_sealers),
            from_rewrite=settings.from_rewrite,
        ),
    )


def take_name(db: Database, settings: Settings) -> NodeInfo:
    """Claim SMTPY_NODE_NAME for this start (ConfigError while a live node holds it)."""
    from smtpy.queue.nodes import claim

    node = NodeInfo(
        settings.node_name,
        started_at=time.time(),
        # SMTPY_HOSTNAME: the other nodes remove results a client forged under this name.
        hostname=settings.hostname,
        heartbeat_seconds=settings.heartbeat_seconds,
    )
    claim(db, node, now=time.time())
    return node


def resume(db: Database, node: str) -> int:
    """Return what an earlier start of `node` left leased (after a crash) to the queue.

    Only once this process holds the node's name: nothing of that start runs.
    """
    from smtpy.queue.queries import release_node

    released = release_node(db, node=node)
    if released:
        logger.info("resumed", deliveries=released, node=node)
    resume_webhooks(db, node)
    return released


def resume_webhooks(db: Database, node: str, *, processes: bool = True) -> int:
    """Return the webhook deliveries an earlier start of `node` (and, with `processes`, of
    its serving processes `NODE.1` …) left leased to the outbox, due now."""
    from smtpy.events.deliveries import owners_of, release
    from smtpy.queue.queries import owner_node

    owners = [node]
    if processes:
        prefix = f"{node}."
        others = {
            str(row["name"])
            for row in db.all(
                "SELECT name FROM nodes WHERE substr(name, 1, :length) = :prefix",
                {"length": len(prefix), "prefix": prefix},
            )
        }
        owners += [
            owner
            for owner in owners_of(db, prefix=prefix)
            if owner_node(owner, {node} | others) == node
        ]
    released = release(db, owners=owners)
    if released:
        logger.info("resumed_webhooks", deliveries=released, node=node)
    return released


def _node_names(settings: Settings, reader: StoreThread) -> OurNames | None:
    """Every node's SMTPY_HOSTNAME: results a client sends under any of them are forged."""
    if not settings.auth_checks:
        return None
    from smtpy.checks.authentication import OurNames
    from smtpy.queue.nodes import list_nodes

    async def load() -> list[str]:
        return [row["hostname"] for row in await reader.call(list_nodes)]

    return OurNames(settings.hostname, load)


def _url_secrets(reader: StoreThread) -> Callable[[str, str], Awaitable[str | None]]:
    """How a delivery to a URL destination finds its signing secret (in the store)."""
    from smtpy.outbound.https_target import destination_secret

    async def lookup(domain: str, url: str) -> str | None:
        return await reader.call(partial(destination_secret, domain=domain, url=url))

    return lookup


def webhook_worker(settings: Settings, writer: StoreThread, reader: StoreThread) -> Any:
    """The worker that drains the webhook outbox (`smtpy.runtime.webhooks`)."""
    from smtpy.admin.webhooks import notify_disabled
    from smtpy.runtime.webhooks import WebhookSettings, WebhookWorker

    def on_disabled(db: Database, webhook_id: str, reason: str) -> None:
        notify_disabled(db, settings=settings, webhook_id=webhook_id, reason=reason)

    return WebhookWorker(
        settings=WebhookSettings(
            node=settings.node_name,
            schedule=tuple(settings.webhook_retry_schedule),
            timeout=settings.webhook_timeout,
            lease_seconds=settings.lease_seconds,
            allow_private=settings.webhook_allow_private,
            ca_file=settings.tls_ca_file,
        ),
        store=writer,
        reader=reader,
        on_disabled=on_disabled,
    )


class Daemon:
    """One serving process: inbound sessions and delivery workers on one event loop.

    `sockets` are listening sockets bound beforehand (shared by the processes
    of a supervisor); without them the daemon binds SMTPY_LISTEN itself.
    `node` is the name a supervisor took for its processes; without it the
    daemon takes SMTPY_NODE_NAME itself, once its sockets are bound.
    `ready` is called once it serves (default: tell systemd). Of several
    processes, only the one with `serve_metrics` answers SMTPY_METRICS_LISTEN.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        reload: Callable[[], Settings] | None = None,
        sockets: list[socket.socket] | None = None,
        ready: Callable[[str], None] | None = None,
        serve_metrics: bool = True,
        node: NodeInfo | None = None,
    ) -> None:
        self.settings = settings
        self._node = node
        self._exit_code = 0
        self._serve_metrics = serve_metrics
        self._reload = reload
        self._sockets = sockets
        self._ready = ready or (lambda status: notify_systemd(f"READY=1\nSTATUS={status}"))
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._sessions: Any = None  # smtpy.smtp.server.Sessions
        self._tls: ssl.SSLContext | None = None

    async def serve(self) -> int:
        from smtpy.admin.srs_secret import stored_srs_secret
        from smtpy.checks.limits import guard_from_settings, start_rate_sync
        from smtpy.checks.scanners import scanner_from_settings
        from smtpy.dns import Lookups, make_resolver
        from smtpy.outbound.deliver import Deliverer
        from smtpy.outbound.signers import SignerCache
        from smtpy.queue.nodes import heartbeat
        from smtpy.queue.queries import release_leases
        from smtpy.queue.scheduler import DeliveryWorker, WorkerSettings
        from smtpy.runtime.upkeep import Upkeep
        from smtpy.smtp.handler import Handler, Policy

        settings = self.settings
        # Listen first: a start that cannot (another daemon has the address) stops here.
        own_sockets = self._sockets is None
        sockets = self._sockets if self._sockets is not None else listeners.bind(settings.listen)
        writer = StoreThread(settings.database_url, name="writer")
        reader = StoreThread(settings.database_url, name="reader")
        writer.start()
        reader.start()
        try:
            # Then the name; the queue is touched only once this process is the node.
            if self._node is None:
                node = await writer.call(lambda db: take_name(db, settings))
                await writer.call(lambda db: resume(db, settings.node_name))
            else:  # a serving process of a supervisor: the supervisor took the name
                node = self._node
                if not await writer.call(lambda db: heartbeat(db, node, now=time.time())):
                    raise ConfigError(
                        f"node name {node.name!r} was taken over by another smtpy serve while "
                        "this one started; set SMTPY_NODE_NAME to a name of its own for each node"
                    )
                released = await writer.call(lambda db: release_leases(db, node=settings.node_name))
                if released:  # this process, started again after it died
                    logger.info("resumed", deliveries=released, node=settings.node_name)
                await writer.call(
                    lambda db: resume_webhooks(db, settings.node_name, processes=False)
                )
            secret = (
                settings.srs_secret.get_secret_value()
                if settings.srs_secret is not None
                else await writer.call(stored_srs_secret)
            )
            srs = SRS(secrets=(secret.encode(),), domain=settings.hostname)

            from smtpy import metrics

            if settings.metrics_listen is not None:
                metrics.enable()  # every process counts; the first one serves the sums
            lookups = Lookups(
                make_resolver(settings.dns_nameservers, timeout=settings.dns_timeout),
                observe=metrics.dns_observed,
            )
            deliverer = Deliverer.from_settings(settings, lookups, secrets=_url_secrets(reader))
            signers = SignerCache(reader)
            worker = DeliveryWorker(
                settings=WorkerSettings(
                    node=settings.node_name,
                    hostname=settings.hostname,
                    concurrency=settings.delivery_concurrency,
                    retry_schedule=tuple(settings.retry_schedule),
                    queue_lifetime=settings.queue_lifetime,
                    destination_concurrency=settings.destination_concurrency,
                    arc_seal=settings.arc_seal,
                    arc_seal_domain=settings.arc_seal_domain,
                    from_rewrite_name=settings.from_rewrite_name if settings.from_rewrite else None,
                    lease_seconds=settings.lease_seconds,
                    heartbeat_seconds=settings.heartbeat_seconds,
                ),
                store=writer,
                deliverer=deliverer,
                signers=signers,
                reader=reader,
            )
            hooks = webhook_worker(settings, writer, reader)
            rules = RuleCache(reader)
            upkeep = Upkeep(
                writer, node=node, retention_days=settings.log_retention, on_lost=self._lost
            )
            guard = guard_from_settings(settings, lookups)
            quota = await _message_quota(settings, writer) if settings.plans else None
            handler = Handler(
                policy=Policy(
                    hostname=settings.hostname,
                    max_recipients=settings.max_recipients,
                    max_message_size=settings.max_message_size,
                    plus_separator=settings.plus_separator,
                ),
                queue=worker.queue,
                rules_for=rules.get,
                srs=srs,
                guard=guard,
                scanner=scanner_from_settings(settings),
                events=upkeep.events,
                authcheck=_inbound_checker(settings, lookups),
                names=_node_names(settings, reader),
                quota=quota,
            )
            self._tls = tls_context(settings)
            await self._listen(handler, sockets)
            metrics_server: MetricsServer | None = None
            if settings.metrics_listen is not None and self._serve_metrics:
                from smtpy.runtime.metrics_server import MetricsServer

                host, port = settings.metrics_listen
                metrics_server = MetricsServer(reader, host=host, port=port)
                await metrics_server.start()

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._hup(rules, signers))

            worker_task = asyncio.create_task(worker.run())
            hooks_task = asyncio.create_task(hooks.run())
            rate_sync = start_rate_sync(guard, writer.call, settings.rate_limit_sync_interval)
            quota_sync = _start_quota_sync(settings, quota, writer)
            upkeep.start()  # message-log writes, heartbeat, pruning
            addresses = ", ".join(f"{h}:{p}" for h, p in settings.listen)
            logger.info(
                "started", listen=addresses, hostname=settings.hostname, node=settings.node_name
            )
            self._ready(f"listening on {addresses}")

            await self._stop.wait()

            notify_systemd("STOPPING=1")
            logger.info("stopping")
            for server in self._servers:
                server.close()
            await asyncio.gather(
                worker.stop(STOP_GRACE),
                hooks.stop(STOP_GRACE),
                self._sessions.shut_down(STOP_GRACE),
            )
            for task in (worker_task, hooks_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await deliverer.close()
            for server in self._servers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), STOP_GRACE)
            await upkeep.stop()
            if rate_sync is not None:
                rate_sync.cancel()
            if quota_sync is not None:
                quota_sync[1].cancel()
                await quota_sync[0].sync()  # the last counts
            if metrics_server is not None:
                await metrics_server.stop()
            logger.info("stopped")
            return self._exit_code
        finally:
            writer.stop()
            reader.stop()
            if own_sockets:  # those not handed to a server yet (a failed start)
                for sock in sockets:
                    sock.close()

    def _lost(self) -> None:
        """Another start took this node's name (ours went stale): stop, with exit code 1."""
        self._exit_code = 1
        self._stop.set()

    async def _listen(self, handler: Any, sockets: list[socket.socket]) -> None:
        from smtpy.smtp.server import server_factory

        loop = asyncio.get_running_loop()
        factory = self._sessions = server_factory(
            handler,
            hostname=self.settings.hostname,
            max_message_size=self.settings.max_message_size,
            tls_context=lambda: self._tls,
            timeout=self.settings.command_timeout,
        )
        for sock in sockets:
            self._servers.append(await loop.create_server(factory, sock=sock))

    def _hup(self, rules: RuleCache, signers: Any) -> None:
        rules.clear()
        signers.clear()
        if self._reload is not None:
            try:
                self._tls = tls_context(self._reload())
            except SmtpyError as exc:
                logger.error(
                    "reload_failed", error=str(exc), keeping="the previous TLS certificate"
                )
        logger.info("reloaded", what="alias rules, DKIM keys and the TLS certificate")


def _quota_sync(settings: Settings) -> Any:
    """The store side of a quota sync, bound to the settings (the plans)."""
    from smtpy.billing.quota import sync_usage

    def sync(db: Database, counts: Any, now: float) -> Any:
        return sync_usage(db, counts, now, settings=settings)

    return sync


async def _message_quota(settings: Settings, writer: StoreThread) -> Any:
    """The organizations' monthly quotas, read once before the first client is served."""
    from smtpy.checks.quota import MessageQuota

    quota = MessageQuota()
    sync = _quota_sync(settings)
    quota.apply(await writer.call(lambda db: sync(db, {}, time.time())))
    return quota


def _start_quota_sync(settings: Settings, quota: Any, writer: StoreThread) -> Any:
    """Sync the quota every SMTPY_QUOTA_SYNC_INTERVAL seconds: (the QuotaSync, its task)."""
    if quota is None:
        return None
    from smtpy.checks.quota import QuotaSync

    syncer = QuotaSync(
        quota, writer.call, _quota_sync(settings), interval=settings.quota_sync_interval
    )
    return syncer, asyncio.create_task(syncer.run())


def run(settings: Settings, *, reload: Callable[[], Settings] | None = None) -> int:
    """Run the daemon until SIGTERM; return the exit code.

    With SMTPY_PROCESSES above 1 a supervisor runs that many serving processes.
    """
    log.configure(settings.log_level)
    restarted = os.environ.pop(PROCESS_VAR, None)
    if restarted is not None:  # one of several serving processes, started again
        from smtpy.runtime.supervisor import serve_restarted

        return serve_restarted(settings, restarted, reload)
    from smtpy.runtime.banner import announce

    announce(settings)  # first lines: hostname, store, listeners, processes; hostname warnings
    Database.prepare(settings.database_url)  # a new store: created without staying bigger
    processes = settings.process_count()
    if processes > 1:
        from smtpy.runtime.supervisor import Supervisor

        return Supervisor(settings, processes=processes, reload=reload).run()
    # The sockets listen before the loop's handlers are in place: a SIGTERM in between
    # (a client may already connect) stops cleanly, as KeyboardInterrupt, exit 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(Daemon(settings, reload=reload).serve())
    except KeyboardInterrupt:
        return 0
