"""GET /docs: the API's reference as Swagger UI, reading GET /openapi.json.

Swagger UI's files come from openapi-ui-bundles (PyPI: Swagger UI 5, which reads OpenAPI 3.1), installed with the
server, so the page works offline and loads nothing from anywhere but this server; the HTML and the few lines that
start Swagger UI are ours. Off with --page off, like the try-it page.
"""
from __future__ import annotations

from typing import List

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
          "favicon-32x32.png": "image/png"}  # the bundle's files the page uses
# Only this server: scripts from files (no inline script), styles the bundle sets inline, images it embeds.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'")
HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""
# validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io for a badge. Under
# --api-key-file the key (the try-it page's, or asked for on a 401) goes with every request Swagger UI sends.
START = """window.addEventListener("load", function () {
  var KEY_STORE = "bert_squad_api_key";
  function withKey(request) {
    var key = sessionStorage.getItem(KEY_STORE);
    if (key) request.headers.Authorization = "Bearer " + key;
    return request;
  }
  fetch("/openapi.json", withKey({headers: {}})).then(function (response) {
    if (response.status === 401) {
      var key = window.prompt("This server needs an API key:");
      if (key && key.trim()) sessionStorage.setItem(KEY_STORE, key.trim());
    }
  }).finally(function () {
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
                                 tryItOutEnabled: false, requestInterceptor: withKey});
  });
});
"""
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}


def routes(title: str) -> List[Route]:
    from openapi_ui_bundles.swagger_ui import static_path

    html = HTML.format(title=title)

    async def page(_request: Request) -> Response:
        return HTMLResponse(html, headers={**HEADERS, "Cache-Control": "no-cache"})

    async def start(_request: Request) -> Response:
        return Response(START, media_type="text/javascript", headers=HEADERS)

    async def asset(request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]  # one of ASSETS: each has a route of its own
        return FileResponse(static_path / name, media_type=ASSETS[name],
                            headers={**HEADERS, "Cache-Control": "max-age=3600"})

    return [Route("/docs", page, methods=["GET", "HEAD"]), Route("/docs/start.js", start, methods=["GET"]),
            *(Route(f"/docs/{name}", asset, methods=["GET"]) for name in ASSETS)]
