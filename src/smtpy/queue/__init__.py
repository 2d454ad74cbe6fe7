"""The durable queue: its queries, the writer thread, the delivery scheduler and the message log."""
