"""The try-it page at GET /: paste a text, ask, see the answer highlighted in place.

The page is one static HTML file with no external resources (servers may be offline). It asks questions
through the public REST API like any other client; the server only adds the examples to pick from
(GET /page/examples.json, read from a SQuAD v1.1 file) and the model facts it shows (GET /model/<name>).
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Callable, List, Optional

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

PAGE_DIR = Path(__file__).resolve().parent / "page"
DEFAULT_EXAMPLES = PAGE_DIR / "examples.json"  # three paragraphs written for the page, in SQuAD v1.1 form
EXAMPLES_SHOWN = 5  # first question of each of the first paragraphs of that many articles
# The page's script is inline and it talks only to this server: nothing else may load or be called.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")


class ExamplesError(ValueError):
    """The examples file cannot be used; the message names it and the fix."""


def load_examples(path: Path = DEFAULT_EXAMPLES, count: int = EXAMPLES_SHOWN) -> List[dict]:
    """[{title, context, question}] from a SQuAD v1.1 file: the first paragraph and question of each article."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        examples = []
        for article in document["data"]:
            paragraph = article["paragraphs"][0]
            examples.append({"title": str(article.get("title", f"example {len(examples) + 1}")).replace("_", " "),
                             "context": paragraph["context"], "question": paragraph["qas"][0]["question"]})
            if len(examples) == count:
                break
    except OSError as e:
        raise ExamplesError(f"cannot read the page examples {path}: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ExamplesError(f"the page examples {path} are not a SQuAD v1.1 file with at least one article, "
                            f"paragraph and question ({type(e).__name__}: {e}); name another file with "
                            f"--page-examples") from None
    if not examples:
        raise ExamplesError(f"the page examples {path} hold no article; name another file with --page-examples")
    return examples


def routes(servable: str, model_facts: Callable[[], dict], examples_path: Optional[Path]) -> List[Route]:
    """The page, its examples and the served model's facts (version, runtime, precision, model sha256: asked per
    request, as a switch changes them)."""
    html = (PAGE_DIR / "index.html").read_text(encoding="utf-8").replace("{{servable}}", escape(servable, quote=True))
    examples = load_examples(examples_path or DEFAULT_EXAMPLES)

    async def page(_request: Request) -> Response:
        return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    async def examples_json(_request: Request) -> Response:
        return JSONResponse(examples)

    async def model(_request: Request) -> Response:
        return JSONResponse({"servable": servable, **model_facts()})

    return [Route("/", page, methods=["GET", "HEAD"]),
            Route("/page/examples.json", examples_json, methods=["GET"]),
            Route(f"/model/{servable}", model, methods=["GET"])]
