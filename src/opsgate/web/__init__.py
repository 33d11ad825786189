"""HTTP: middleware, authentication, the JSON API (and, later, the console)."""
