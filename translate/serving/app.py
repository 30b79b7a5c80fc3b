"""The HTTP API and the page, on FastAPI: what `make serve` runs (translate/commands/serve.py).

    GET  /                  the page: a sentence, every loaded model's translation and attention side by side
    GET  /healthz           {"status": "ok", "models": [...], "queue": waiting requests, ...}
    GET  /v1/models         {"models": [{"name", "family", languages, "parameters", "step", "bleu", ...}]}
    POST /v1/translate      {"texts": [...], "model", "beam_size", "n_best", "length_penalty", "attention",
                             "split_sentences"}
                            -> {"model", "translations": [{"text", "score", "n_best": [...], "attention"?}]}
    GET  /v1/comparison     BLEU by length of the loaded runs, when they come from one `make compare`
    GET  /v1/comparison.png its figure, drawn once at start-up
    GET  /docs              OpenAPI

Every error, of every status, is JSON, {"error": "<what>: <cause>; <fix>"}: 400 an unparsable body, 403 a
foreign Origin, 404 an unknown model or route, 405 a wrong method, 408 a body too slow, 413 a limit passed
(texts per request, characters per text, bytes per body or per answer; the limit named), 421 a Host that is not
this server's, 422 a bad value, 500 an internal error (no internals: see the server's log), 503 with Retry-After
when the queue is full.  A request whose client goes away is cancelled.

Only the server's own names may reach it (DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends
`Host: evil.example`), and only its own page may drive it from a browser (an `Origin` of another site is
refused); it sends no CORS headers.

A text of several sentences is translated sentence by sentence (the server's eval.split_sentences, or the
request's "split_sentences"), by the rules of the model's source language, the translations joined by a
space: its score is the sum of theirs, and its k-th n-best entry joins the k-th best of each sentence.  A
request with "attention": true has each text translated whole (its map is of one model input); asking for
both is refused (422).
"""

import asyncio
import io
import ipaddress
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from translate.decoding.options import DecodingOptions
from translate.serving.batcher import Batcher, DecodingFailed, Job, QueueFull, answer_bytes

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
NO_ATTENTION = "no attention: the decoder sees one fixed vector"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})
SHOWN = 120  # characters of a client's value quoted back in an error


@dataclass(frozen=True)
class Limits:
    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body_bytes: int = 1 << 20  # bytes per request body
    max_beam: int = 16
    max_answer_bytes: int = 32 << 20  # bytes of one answer's JSON (attention maps are the large ones)
    body_timeout_s: float = 30.0  # the whole request body within this


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


class ErrorAnswer(BaseModel):
    error: str = Field(description="<field or limit>: <cause>; <fix>")


# every status the server answers besides 200, each with ErrorAnswer (uvicorn's own 400, 408, 431 and 503 too)
ERRORS = {
    400: "an unparsable request or body",
    403: "an Origin header of another site",
    404: "an unknown model or route",
    405: "a method the route does not take",
    408: "headers or body not received in time",
    413: "a limit passed: texts, characters, body or answer bytes",
    421: "a Host header that is not this server's",
    422: "a bad value",
    431: "headers over max_header_kb",
    500: "an internal error; see the server's log",
    503: "busy (Retry-After) or stopping",
}


def error_body(message: str) -> bytes:
    """An error's JSON, ASCII-escaped: a client's lone surrogate quoted back stays valid JSON."""
    return json.dumps({"error": message}, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ErrorResponse(JSONResponse):
    def render(self, content) -> bytes:
        return error_body(content["error"])


def error(status: int, message: str, **headers) -> JSONResponse:
    return ErrorResponse({"error": message}, status_code=status, headers=headers or None)


def shown(value) -> str:
    """A client's value, quoted and cut to SHOWN characters, for an error message."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


HOST_HEADER = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::\d{1,5})?", re.IGNORECASE)


def host_name(header: str) -> str | None:
    """The name in a Host header, lower case, without port or brackets ("[::1]:8000" -> "::1"); None if malformed."""
    match = HOST_HEADER.fullmatch(header.strip())
    return None if match is None else (match["ipv6"] or match["name"]).lower()


@dataclass(frozen=True)
class Hosts:
    """The names a request's Host header may carry (any port): the server's own.  Bound to every interface
    (0.0.0.0, ::): any IP literal, localhost, and `allowed_hosts`."""

    names: frozenset[str] = LOOPBACK_NAMES
    any_ip: bool = False

    @classmethod
    def bound_to(cls, host: str, allowed_hosts=()) -> "Hosts":
        extra = {name.lower() for name in allowed_hosts}
        if host in ALL_INTERFACES:
            return cls(frozenset({"localhost", *extra}), any_ip=True)
        bound = host.strip("[]").lower()
        return cls(frozenset({*(LOOPBACK_NAMES if is_loopback(bound) else ()), bound, *extra}))

    def allow(self, header: str) -> bool:
        name = host_name(header)
        return name is not None and (name in self.names or (self.any_ip and is_ip(name)))


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the server the request was sent to (its Host, port included)."""
    scheme, separator, authority = origin.strip().partition("://")
    return bool(separator) and scheme.lower() in ("http", "https") and authority.lower() == host.strip().lower()


class HostGuard:
    """ASGI middleware against DNS rebinding and cross-site requests: a Host header that is not one of `hosts`
    (or missing, or repeated) gets 421; an Origin header other than the server's own origin gets 403."""

    def __init__(self, app, hosts: Hosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(Headers(scope=scope))
        return await (refusal or self.app)(scope, receive, send)

    def refusal(self, headers: Headers) -> JSONResponse | None:
        hosts, origins = headers.getlist("host"), headers.getlist("origin")
        if len(hosts) != 1 or not self.hosts.allow(hosts[0]):
            given = f"{shown(hosts[0])} is not a name of this server" if hosts else "missing"
            given = f"{len(hosts)} headers, one expected" if len(hosts) > 1 else given
            names = ", ".join(sorted(self.hosts.names)) + (", an IP address" if self.hosts.any_ip else "")
            return error(421, f"Host: {given}; use {names} (allowed_hosts adds one)")
        if len(origins) > 1 or (origins and not same_origin(origins[0], hosts[0])):
            given = shown(origins[0]) if len(origins) == 1 else f"{len(origins)} headers"
            return error(403, f"Origin: {given} is not this server's page; send requests from http://{hosts[0]}/")
        return None


class BodyTooLong(Exception):
    pass


async def read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client went away; BodyTooLong as soon as it passes `limit` bytes."""
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part, more = message.get("body", b""), message.get("more_body", False)
        size += len(part)
        if size > limit:
            raise BodyTooLong
        parts.append(part)
    return b"".join(parts)


class BodyLimit:
    """ASGI middleware: every request body is read here, whole, and handed on: over `limit` bytes it gets 413, by
    its Content-Length before it is read, or (chunked: no length to go by) as soon as the bytes received pass the
    limit, at most `limit` bytes of it held; not complete within `seconds` of its headers, 408 and the connection
    closed (a client trickling a body holds nothing for longer)."""

    def __init__(self, app, limit: int, seconds: float):
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_long = error(413, f"request body: more than {self.limit:,} bytes (max_body_bytes); send less per request")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_long(scope, receive, send)
        try:
            body = await asyncio.wait_for(read_body(receive, self.limit), self.seconds)
        except BodyTooLong:
            return await too_long(scope, receive, send)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            slow = f"request body: not received within {self.seconds:g} s (body_timeout_s); send it whole at once"
            return await error(408, slow, Connection="close")(scope, receive, send)
        if body is None:
            return None  # the client is gone
        return await self.app(scope, replay(body, receive), send)


def replay(body: bytes, receive):
    """A `receive` that gives the body read once, then the connection's own events (a disconnect)."""
    replayed = False

    async def receive_again():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


def http_error_message(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's and FastAPI's own errors (unknown route, wrong method, unparsable body) in the server's words."""
    path, method = shown(request.url.path), request.method
    if exc.status_code == 404:
        return f"path: no route {path}; GET /openapi.json lists the API"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        return f"method: {method} is not taken by {path}; use {allowed}"
    if exc.status_code == 400:
        return "body: cannot be parsed; send a JSON object in UTF-8 with Content-Type: application/json"
    return f"{path}: {exc.detail}"


def validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        cause = first.get("ctx", {}).get("error", "not JSON")
        return f"body: not valid JSON ({cause}, at character {first['loc'][-1]}); send a JSON object"
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return f"{where}: {first['msg']}"


def add_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI or Starlette would answer themselves, in the server's JSON shape."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, http_error_message(request, exc), **(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # Starlette logs the traceback after this answer
        return error(500, f"internal error: {request.method} {shown(request.url.path)} failed; see the server's log")


SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate (U+D800-U+DFFF: not a Unicode scalar value) in `text`, or None."""
    match = SURROGATE.search(text)
    return None if match is None else match.start()


def create_app(
    models: dict,
    batcher: Batcher,
    defaults: DecodingOptions,
    limits: Limits = Limits(),
    comparison: dict | None = None,
    figure: bytes | None = None,
    hosts: Hosts = Hosts(),
):
    """The app serving `models` (name -> ServedModel) through `batcher`, to requests whose Host is one of `hosts`;
    `comparison`: the BLEU-by-length report of the runs (None when they are not one comparison), `figure` its
    drawing as PNG (report_figure, drawn before serving)."""
    finishing: set[asyncio.Task] = set()  # requests answered after the graceful timeout (until_done_or_gone)
    app = FastAPI(
        title="translate",
        summary="Neural machine translation: the runs of this project, served",
        lifespan=lifespan(batcher, finishing),
        responses={status: {"model": ErrorAnswer, "description": what} for status, what in ERRORS.items()},
    )
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, seconds=limits.body_timeout_s)
    app.add_middleware(HostGuard, hosts=hosts)  # added last: runs first, before a body is read
    add_error_handlers(app)
    page_html = PAGE.read_text(encoding="utf-8")
    not_comparison = "comparison: the loaded runs are not one evaluated make compare; serve its runs"

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
        refusal = refuse_request(body, name, models, limits, defaults)
        if refusal is not None:
            return refusal
        job = new_job(body, name, models, defaults)
        if job.options.attention:
            bound = await asyncio.to_thread(batcher.attention_bytes, job)
            if bound > limits.max_answer_bytes:
                return answer_too_large(bound, limits)
        try:
            batcher.submit(job)
        except QueueFull as e:
            return error(503, f"busy: {e}; retry shortly", **{"Retry-After": "1"})
        try:
            results = await until_done_or_gone(request, job, batcher, finishing)
        except DecodingFailed:
            return error(500, "internal error: these texts could not be translated; see the server's log")
        except Stopping:
            return error(503, "server: stopping before this request was translated; send it again later")
        if results is None:
            return Response(status_code=499)  # the client is gone: nobody reads this
        size = answer_bytes(results)
        if size > limits.max_answer_bytes:
            return answer_too_large(size, limits)
        return JSONResponse(answer(name, body, job.options, results))

    @app.get("/v1/comparison")
    async def comparison_report():
        return comparison if comparison is not None else error(404, not_comparison)

    @app.get("/v1/comparison.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def comparison_figure():
        if comparison is None:
            return error(404, not_comparison)
        if figure is None:
            return error(404, "comparison.png: it could not be drawn at start-up; see the server's log")
        return Response(figure, media_type="image/png")

    return app


def refuse_request(body: TranslateRequest, name: str | None, models: dict, limits: Limits, defaults: DecodingOptions):
    """The error answering a request the server will not take (a bad value or a limit passed), or None."""
    if name is None:
        return error(422, f"model: required when several are loaded ({', '.join(models)})")
    if name not in models:
        return error(404, f"model: no model {shown(name)} here; GET /v1/models lists {', '.join(models)}")
    if len(body.texts) > limits.max_texts:
        return error(413, f"texts: {len(body.texts)} in one request; at most {limits.max_texts} (max_texts)")
    for i, text in enumerate(body.texts):
        if len(text) > limits.max_chars:
            return error(413, f"texts[{i}]: {len(text)} characters; at most {limits.max_chars} (max_chars)")
        if (at := lone_surrogate(text)) is not None:
            return error(
                422,
                f"texts[{i}]: a lone surrogate (U+{ord(text[at]):04X}) at character {at}, not a Unicode character; "
                "send valid UTF-8 text",
            )
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
    return None


def new_job(body: TranslateRequest, name: str, models: dict, defaults: DecodingOptions) -> Job:
    """The batcher's job for a request refuse_request took: its options, the server's defaults filled in."""
    beam = body.beam_size or defaults.beam_size
    penalty = defaults.length_penalty if body.length_penalty is None else body.length_penalty
    split = defaults.split_sentences if body.split_sentences is None else body.split_sentences
    attention = body.attention and models[name].model.has_attention
    options = replace(
        defaults,
        beam_size=beam,
        n_best=body.n_best,
        length_penalty=penalty,
        attention=attention,
        split_sentences=split and not body.attention,
    )
    return Job(name, [text.strip() for text in body.texts], options, asyncio.get_running_loop())


def answer_too_large(size: int, limits: Limits) -> JSONResponse:
    return error(
        413,
        f"answer: up to {size:,} bytes; at most {limits.max_answer_bytes:,} (max_answer_kb); send fewer or shorter "
        "texts per request, or leave out attention",
    )


def answer(name: str, body: TranslateRequest, options: DecodingOptions, results) -> dict:
    """The JSON of a translate request's answer (plain data: json.dumps takes it directly)."""
    return {
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


class Stopping(Exception):
    """The server's graceful shutdown timed out before this request's job was decoded (HTTP 503)."""


async def until_done_or_gone(request: Request, job: Job, batcher: Batcher, finishing: set, poll: float = 0.05):
    """The job's result, or None if the client disconnected first (the job is then cancelled).  When the server's
    graceful shutdown times out (uvicorn cancels this task): Stopping for a job still waiting (cancelled); a job
    being decoded is waited for, its task put in `finishing` (the worker ends its batch before the server exits,
    and the shutdown waits for these answers)."""
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=poll)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                batcher.cancel(job)
                return None
    except asyncio.CancelledError:
        if batcher.cancel(job):
            raise Stopping from None
        task = asyncio.current_task()
        finishing.add(task)
        task.add_done_callback(finishing.discard)
        return await job.future


def lifespan(batcher: Batcher, finishing: set):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)  # uvicorn stopped taking requests; finish those waiting
        if finishing:  # answers of the last batch, decoded past the graceful timeout: sent before the exit
            await asyncio.wait(set(finishing))

    return run


def report_figure(report: dict) -> bytes:
    """The comparison's BLEU-by-length figure as PNG bytes (slow for many buckets: draw it once, before serving)."""
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
