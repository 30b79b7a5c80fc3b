"""The HTTP API and the page, on FastAPI: what `make serve` runs (translate/serve.py).

    GET  /                  the page: a sentence, every loaded model's translation and attention side by side
    GET  /healthz           {"status": "ok", "models": [...], "queue": waiting requests, ...}
    GET  /v1/models         {"models": [{"name", "family", languages, "parameters", "step", "bleu", ...}]}
    POST /v1/translate      {"texts": [...], "model", "beam_size", "n_best", "length_penalty", "attention",
                             "split_sentences"}
                            -> {"model", "translations": [{"text", "score", "n_best": [...], "attention"?}]}
    GET  /v1/comparison     BLEU by length of the loaded runs, when they come from one `make compare`
    GET  /v1/comparison.png its figure
    GET  /docs              OpenAPI

Every error is JSON, {"error": "<what>: <cause>; <fix>"}: 404 unknown model, 413 a limit passed (texts
per request, characters per text, bytes per body; the limit named), 422 a bad value, 503 with Retry-After
when the queue is full.  A request whose client goes away is cancelled.

A text of several sentences is translated sentence by sentence (the server's eval.split_sentences, or the
request's "split_sentences"), by the rules of the model's source language, the translations joined by a
space: its score is the sum of theirs, and its k-th n-best entry joins the k-th best of each sentence.  A
request with "attention": true has each text translated whole (its map is of one model input); asking for
both is refused (422).
"""

import asyncio
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from translate.serving.batcher import Batcher, Job, Options, QueueFull

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
NO_ATTENTION = "no attention: the decoder sees one fixed vector"


@dataclass(frozen=True)
class Limits:
    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body_bytes: int = 1 << 20  # bytes per request body
    max_beam: int = 16


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    texts: list[str] = Field(description="source sentences, translated in order", min_length=1)
    model: str | None = Field(None, description="a name from /v1/models; optional when one model is loaded")
    beam_size: int | None = Field(None, ge=1, description="1 = greedy; default: the server's eval.beam_size")
    n_best: int = Field(1, ge=1, description="translations per text, best first (<= beam_size)")
    length_penalty: float | None = Field(None, ge=0, le=10, description="GNMT alpha; default: the server's")
    attention: bool = Field(False, description="also return where the model looked, by layer and head")
    split_sentences: bool | None = Field(
        None,
        description="translate each text sentence by sentence, the translations joined by a space; default: the "
        "server's eval.split_sentences, off when attention is asked for (each text whole)",
    )


def error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, by its Content-Length before it is read, or
    (chunked: no length to go by) as soon as the bytes received pass the limit; such a body is read here, at
    most `limit` bytes of it held, and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_long = error(413, f"request body: more than {self.limit:,} bytes (max_body_bytes); send less per request")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await too_long(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body, more = body + message.get("body", b""), message.get("more_body", False)
            if len(body) > self.limit:
                return await too_long(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def create_app(models: dict, batcher: Batcher, defaults: Options, limits: Limits = Limits(), comparison=None):
    """The app serving `models` (name -> ServedModel) through `batcher`; `comparison`: a callable giving the
    BLEU-by-length report of the runs (or None when they are not one comparison) and one drawing its figure."""
    app = FastAPI(
        title="translate",
        summary="Neural machine translation: the runs of this project, served",
        lifespan=lifespan(batcher),
    )
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return error(422, f"{where}: {first['msg']}")

    page_html = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_html)

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "stopping" if batcher.stopping else "ok",
            "models": list(models),
            "queue": batcher.depth(),
            "requests_decoded": batcher.requests,
            "batches": batcher.batches,
        }

    @app.get("/v1/models")
    async def list_models():
        return {"models": [served.describe() for served in models.values()], "limits": limits.__dict__}

    @app.post("/v1/translate")
    async def translate(body: TranslateRequest, request: Request):
        name = body.model or (next(iter(models)) if len(models) == 1 else None)
        if name is None:
            return error(422, f"model: required when several are loaded ({', '.join(models)})")
        if name not in models:
            return error(404, f"model: no model {name!r} here; GET /v1/models lists {', '.join(models)}")
        if len(body.texts) > limits.max_texts:
            return error(413, f"texts: {len(body.texts)} in one request; at most {limits.max_texts} (max_texts)")
        for i, text in enumerate(body.texts):
            if len(text) > limits.max_chars:
                return error(413, f"texts[{i}]: {len(text)} characters; at most {limits.max_chars} (max_chars)")
        beam = body.beam_size or defaults.beam_size
        if beam > limits.max_beam:
            return error(422, f"beam_size: {beam}; at most {limits.max_beam}")
        if body.n_best > beam:
            return error(422, f"n_best: {body.n_best} > beam_size {beam} (n-best lists need a beam that wide)")
        if body.attention and body.split_sentences:
            return error(
                422,
                "split_sentences: true with attention: true; an attention map is of one model input, each text "
                "whole: leave out split_sentences or attention",
            )
        penalty = defaults.length_penalty if body.length_penalty is None else body.length_penalty
        split = defaults.split_sentences if body.split_sentences is None else body.split_sentences
        attention = body.attention and models[name].model.has_attention
        options = Options(beam, body.n_best, penalty, attention, split and not body.attention)
        job = Job(name, [text.strip() for text in body.texts], options, asyncio.get_running_loop())
        try:
            batcher.submit(job)
        except QueueFull as e:
            return error(503, f"busy: {e}; retry shortly", **{"Retry-After": "1"})
        results = await until_done_or_gone(request, job, batcher)
        if results is None:
            return Response(status_code=499)  # the client is gone: nobody reads this
        return JSONResponse(  # plain data: json.dumps directly, not FastAPI's encoder walking every value
            {
                "model": name,
                **({"attention_note": NO_ATTENTION} if body.attention and not options.attention else {}),
                "translations": [
                    {
                        "text": r.text,
                        "score": round(r.score, 4),
                        "n_best": [{"text": text, "score": round(score, 4)} for text, score in r.n_best],
                        **({"attention": r.attention} if body.attention else {}),
                    }
                    for r in results
                ],
            }
        )

    @app.get("/v1/comparison")
    async def comparison_report():
        report = comparison() if comparison else None
        if report is None:
            return error(404, "comparison: the loaded runs are not one evaluated make compare; serve its runs")
        return report

    @app.get("/v1/comparison.png")
    async def comparison_figure():
        report = comparison() if comparison else None
        if report is None:
            return error(404, "comparison: the loaded runs are not one evaluated make compare; serve its runs")
        return Response(report_figure(report), media_type="image/png")

    return app


async def until_done_or_gone(request: Request, job: Job, batcher: Batcher, poll: float = 0.05):
    """The job's result, or None if the client disconnected first (the job is then cancelled)."""
    while True:
        done, _ = await asyncio.wait({job.future}, timeout=poll)
        if done:
            return job.future.result()
        if await request.is_disconnected():
            batcher.cancel(job)
            return None


def lifespan(batcher: Batcher):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)  # uvicorn stopped taking requests; finish those waiting

    return run


def report_figure(report: dict) -> bytes:
    """The comparison's BLEU-by-length figure as PNG bytes."""
    from translate.evaluation.plots import bleu_by_length_figure, plt

    runs = report["runs"]
    panels = [("test set", [(r["name"], r["bleu_by_length"]) for r in runs])]
    if all(r.get("probe_bleu_by_length") for r in runs):
        panels.append(("long-sentence probe", [(r["name"], r["probe_bleu_by_length"]) for r in runs]))
    figure = bleu_by_length_figure(panels)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
