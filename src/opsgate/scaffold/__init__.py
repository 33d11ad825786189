"""`opsgate new plugin NAME`: a new plugin package, generated from the templates here."""
