"""Other services: remote backends and their signing, reconciliation, webhooks and the outbox."""
