"""The first lines of `smtpy serve`: who it is, which store, where it listens, and what is wrong.

`starting` names the hostname, the store, the listeners and the processes;
then one `hostname_unfit` warning per reason the hostname cannot be right for
an MX: no dot, a localhost name, no address in DNS (looked up through
SMTPY_DNS_NAMESERVERS with a short timeout, so a dead resolver delays start
by `LOOKUP_TIMEOUT` at most), or only loopback addresses. The daemon starts
anyway: a trial on a laptop is a fine use of `localhost`.

`hostname_problems` is the rule, pure; `announce` looks the name up and logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpy import __version__, log

if TYPE_CHECKING:
    from smtpy.config import Settings

logger = log.get(__name__)

LOOKUP_TIMEOUT = 2.0  # seconds the address lookup may delay start-up
FIX = "set SMTPY_HOSTNAME to the name your domains' MX records point to"


def needs_lookup(hostname: str) -> bool:
    """Whether DNS can tell anything more about `hostname` (it has a dot, it is no localhost)."""
    return not _local_name(hostname) and "." in hostname


def _local_name(hostname: str) -> bool:
    name = hostname.lower().rstrip(".")
    return name in {"localhost", "localhost.localdomain"} or name.endswith(".localhost")


def hostname_problems(
    hostname: str, addresses: Sequence[str] | None, lookup_error: str | None = None
) -> list[str]:
    """Why `hostname` cannot be right for an MX; [] when nothing is wrong.

    `addresses`: what DNS answered for it (None: not looked up); `lookup_error`:
    why the lookup failed.
    """
    if _local_name(hostname):
        return [f"{hostname} names this machine only: other hosts cannot send mail to it; {FIX}"]
    if "." not in hostname:
        return [f"{hostname} has no dot: an MX needs a fully qualified name; {FIX}"]
    if lookup_error is not None:
        return [f"could not check the address of {hostname}: {lookup_error}"]
    if addresses is None:
        return []
    if not addresses:
        return [
            f"{hostname} has no A or AAAA record: senders cannot connect to it; publish one, "
            f"or {FIX}"
        ]
    if all(ipaddress.ip_address(a).is_loopback for a in addresses):
        shown = ", ".join(addresses)
        return [f"{hostname} resolves only to loopback ({shown}): other hosts cannot reach it"]
    return []


def lookup_addresses(settings: Settings) -> tuple[list[str] | None, str | None]:
    """The hostname's addresses through the configured resolvers, or why there are none."""
    if not needs_lookup(settings.hostname):
        return None, None
    from smtpy.dns import DNSTemporaryError, Lookups, make_resolver
    from smtpy.errors import SmtpyError

    timeout = min(settings.dns_timeout, LOOKUP_TIMEOUT)
    lookups = Lookups(make_resolver(settings.dns_nameservers, timeout=timeout))

    async def look() -> list[str]:
        return await asyncio.wait_for(lookups.addresses(settings.hostname), timeout + 0.5)

    try:
        return asyncio.run(look()), None
    except (TimeoutError, DNSTemporaryError):
        return None, f"no answer from the resolver within {timeout:g}s"
    except SmtpyError as exc:
        return None, str(exc)


def announce(settings: Settings) -> None:
    """Log the `starting` line and the hostname's warnings."""
    from smtpy.config import mask_url

    logger.info(
        "starting",
        hostname=settings.hostname,
        store=mask_url(settings.database_url),
        listen=", ".join(settings.display("listen").split(",")),
        processes=settings.process_count(),
        node=settings.node_name,
        version=__version__,
    )
    addresses, error = lookup_addresses(settings)
    for problem in hostname_problems(settings.hostname, addresses, error):
        logger.warning("hostname_unfit", hostname=settings.hostname, problem=problem)
