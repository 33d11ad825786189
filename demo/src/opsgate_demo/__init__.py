"""The demo fintech backend: customers, accounts, a double-entry ledger, payments, notes.

A real team replaces this package with handlers that call its own services.
"""
