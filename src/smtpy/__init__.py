"""smtpy: a self-hosted mail forwarder."""

__version__ = "0.1.0"
