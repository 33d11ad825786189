"""The audit trail: records, the hash chain, anchoring, redaction, search, archives and reports."""
