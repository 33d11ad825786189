"""The JSON API, v1 (`/api/v1`)."""
