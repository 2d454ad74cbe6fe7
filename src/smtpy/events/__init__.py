"""Events and webhooks: what happened, told to the organizations that asked.

- `types`: the typed events (`message.received`, `domain.verified`, …) and the
  body every webhook receives, `{"type","timestamp","data"}`;
- `outbox`: events written into the store in the transaction of what caused
  them (the message log's, `message.*`, by `smtpy.queue.event_feed` after
  the log's commits), only for organizations with an endpoint subscribed to
  that type;
- `signing`: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
  `webhook-signature`) with `whsec_` secrets;
- `deliveries`: the outbox's delivery rows, leased like the mail queue, and
  the retry schedule;
- `sender`: the HTTPS POST itself, to the address that was checked.

This package sits just above the store: the daemon's stages and the core
services emit through it; `smtpy serve` delivers (`smtpy.runtime.webhooks`).
"""
