"""The API's interactive docs (Swagger UI), served from opsgate's own origin.

FastAPI's default page loads Swagger UI from a third-party CDN: a script from elsewhere
running on the console's origin, and a blank page offline. Here the assets are Swagger UI 5
vendored in `web/static/swagger-ui/` (it reads OpenAPI 3.1, which FastAPI emits; the
`swagger-ui-bundle` package ships Swagger UI 3, which cannot), and the page's one script of
our own is a file too, so the page passes the same Content-Security-Policy as the console
(no inline script).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

SWAGGER_UI = Path(__file__).parent / "static" / "swagger-ui"

DOCS_URL = "/api/v1/docs"
ASSETS_URL = "/api/v1/docs/assets"
INIT_URL = "/api/v1/docs/init.js"


def _page(title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{ASSETS_URL}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_URL}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_URL}/swagger-ui-bundle.js"></script>
<script src="{INIT_URL}"></script>
</body>
</html>
"""


def _init_script(openapi_url: str) -> str:
    return f"""window.ui = SwaggerUIBundle({{
  url: {json.dumps(openapi_url)},
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
}});
"""


def install(app: FastAPI) -> None:
    """Serve the docs page, its init script and the Swagger UI assets (create the app with
    `docs_url=None`)."""
    openapi_url = app.openapi_url or "/api/v1/openapi.json"
    page = _page(f"{app.title} - API docs")
    script = _init_script(openapi_url)

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get(INIT_URL, include_in_schema=False)
    def docs_init() -> Response:
        return Response(script, media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=SWAGGER_UI), name="docs-assets")
