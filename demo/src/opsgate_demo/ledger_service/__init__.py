"""The demo ledger as a separate service (`opsgate demo ledger-service`): a remote backend.

It owns the demo domain's money state in its own database and runs `payment.reverse` and
`account.adjust_balance` for opsgate over the contract in docs/backends.md: signed requests
and answers, idempotency keys enforced in the same transaction as the effect, the caller's
request and trace IDs on every log line.
"""
