"""The action path: registry, policy and its conditions, the gateway pipeline, limits, cumulative
figures, idempotency."""
