"""The durable queue: its queries, the writer thread, the delivery scheduler, the message log
and the feed that makes the log's rows into webhook events."""
