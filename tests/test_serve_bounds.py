"""The server's bounds (docs/security.md, "The server's bounds"), each against a real
server process on 127.0.0.1: Host and Origin (DNS rebinding, cross-site requests), slow and half-open clients,
the cap on connections, SIGTERM beside a trickling client, answers too large, a text that is not Unicode beside
an honest one, the comparison's figure drawn once, one JSON error shape for every status; and the HTTP API
fuzzed from its own OpenAPI schema with Schemathesis."""

import asyncio
import json
import random
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from serving_fixtures import Server, until

from translate.data.corpus import SHARED_MULTI30K, read_lines
from translate.decoding.inference import Translation
from translate.decoding.options import DecodingOptions
from translate.serving.app import Hosts, create_app, host_name
from translate.serving.batcher import Batcher, DecodingFailed, Job

pytestmark = pytest.mark.slow  # trains three models, starts servers

FAST = ["header_timeout_s=1.5", "body_timeout_s=1.5", "write_timeout_s=2", "max_header_kb=8", "max_answer_kb=8192"]
HONEST = {"texts": ["Ein Hund rennt durch den Schnee."], "model": "transformer"}
DOCUMENTED = {400, 403, 404, 405, 408, 413, 421, 422, 431, 500, 503}  # app.ERRORS, docs/serving.md


@pytest.fixture(scope="module")
def server(sweep):
    """The three runs, every time bound short (FAST) so that the slow clients below are cut off within seconds."""
    server = Server([sweep / family for family in ("rnn", "rnn_attention", "transformer")], *FAST)
    yield server
    assert server.stop() == 0


def one_error(payload) -> str:
    """The message of an answer in the server's error shape: a JSON object whose one key is "error", one line."""
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    assert isinstance(payload["error"], str) and "\n" not in payload["error"]
    return payload["error"]


def raw_answer(sock: socket.socket, seconds: float = 10) -> tuple[int | None, dict | None, float]:
    """What the server sends on a raw socket until it closes it: (status, JSON body, seconds it took); status None
    if it sent nothing and closed or reset the connection."""
    start, data = time.monotonic(), b""
    sock.settimeout(seconds)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - start
    if not data:
        return None, None, elapsed
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None, elapsed


def long_texts(count: int, characters: int, seed: int = 0) -> list[str]:
    words = " ".join(read_lines(SHARED_MULTI30K / "val.de.gz")[:400]).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(characters // 4))[:characters] for _ in range(count)]


# 5. DNS rebinding and cross-site requests


@pytest.mark.parametrize("path, body", [("/v1/models", None), ("/v1/translate", HONEST)])
def test_a_host_name_not_the_servers_gets_421(server, path, body):
    method = "POST" if body else "GET"
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "localhost@evil.example"):
        status, payload, _ = server.request(method, path, body, headers={"Host": host})
        assert status == 421 and "is not a name of this server" in one_error(payload), (host, payload)
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}"):
        assert server.request(method, path, body, headers={"Host": host})[0] == 200, host


def test_no_host_or_two_get_421(server):
    two = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: a.b\r\nConnection: close\r\n\r\n"
    for request in (b"GET /healthz HTTP/1.0\r\n\r\n", two):
        with server.connect() as sock:
            sock.sendall(request)
            status, payload, _ = raw_answer(sock)
        assert status == 421 and one_error(payload).startswith("Host:")


def test_bound_to_every_interface_any_ip_literal_localhost_and_allowed_hosts_are_names():
    everywhere = Hosts.bound_to("0.0.0.0", ["mt.example.org"])
    assert all(everywhere.allow(h) for h in ("10.1.2.3:8000", "[fe80::1]", "localhost", "MT.example.org:80"))
    assert not any(everywhere.allow(h) for h in ("evil.example", "10.1.2.3.evil.example", "", "a b"))
    one = Hosts.bound_to("192.168.1.5")
    assert one.allow("192.168.1.5:8000") and not one.allow("10.1.2.3") and not one.allow("localhost")
    assert Hosts.bound_to("::1").allow("[::1]:8000") and Hosts.bound_to("localhost").allow("127.0.0.1")
    assert (
        host_name("[::1]:80") == "::1" and host_name("Example.ORG:8000") == "example.org" and host_name("a/b") is None
    )


def test_only_the_servers_own_origin_may_drive_it_and_no_cors_headers(server):
    own = f"http://127.0.0.1:{server.port}"
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}", f"{own}.evil.example"):
        for method, path, body in (("POST", "/v1/translate", HONEST), ("GET", "/v1/models", None)):
            status, payload, headers = server.request(method, path, body, headers={"Origin": origin})
            assert status == 403 and one_error(payload).startswith("Origin:"), (origin, payload)
            assert not [h for h in headers if h.lower().startswith("access-control-")]
    status, _, headers = server.post(HONEST, headers={"Origin": own})
    assert status == 200 and not [h for h in headers if h.lower().startswith("access-control-")]


# 6. Slow clients


def test_a_body_trickling_in_gets_408_and_is_closed(server):
    with server.connect() as sock:
        sock.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000\r\n\r\n{")
        start = time.monotonic()
        for _ in range(3):
            time.sleep(0.5)
            sock.sendall(b" ")
        status, payload, _ = raw_answer(sock)
    assert status == 408 and "body_timeout_s" in one_error(payload)
    assert time.monotonic() - start < 1.5 + 2


@pytest.mark.parametrize("keep_alive", [False, True])
def test_headers_that_never_end_get_408_and_are_closed(server, keep_alive):
    with server.connect() as sock:
        if keep_alive:  # a first request answered, then a second that never ends: the timer starts again
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        status, payload, elapsed = raw_answer(sock)
    assert status == 408 and "header_timeout_s" in one_error(payload) and elapsed < 1.5 + 2


def test_headers_past_max_header_kb_get_431(server):
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for i in range(64):
                sock.sendall(b"X-Pad-%d: %s\r\n" % (i, b"x" * 1000))
        except OSError:
            pass  # closed while we were still sending
        status, payload, _ = raw_answer(sock)
    assert status == 431 and "max_header_kb" in one_error(payload)


def test_a_client_that_reads_nothing_of_its_answer_is_cut_off(server):
    body = json.dumps({"texts": long_texts(1, 500, seed=3), "model": "transformer", "attention": True}).encode()
    files = server.open_files()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the answer stays with the server
    sock.connect(("127.0.0.1", server.port))
    with sock:
        sock.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert until(lambda: server.open_files() > files, 10)
        assert until(lambda: server.open_files() <= files, 120)  # decoded, written in part, then cut off
        received = b""
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, content = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-len")))
    assert len(content) < length  # the rest was never sent
    assert server.get("/healthz")[0] == 200


def test_a_cap_on_connections_keeps_file_descriptors_and_healthz(sweep):
    cap, seconds = 20, 3
    bounds = [f"max_connections={cap}", "limit_concurrency=10", f"header_timeout_s={seconds}"]
    server = Server([sweep / "transformer"], *bounds)
    held = []
    try:
        before = server.open_files()
        for _ in range(12):  # idle connections past limit_concurrency: a request gets uvicorn's 503, in JSON
            held.append(server.connect())
        time.sleep(0.3)
        status, payload, headers = server.get("/healthz")
        assert status == 503 and "limit_concurrency" in one_error(payload) and headers.get("retry-after") == "1"
        for _ in range(300):  # half-open: connected, nothing sent
            held.append(server.connect())
        assert server.open_files() <= before + cap + 5
        answers = [raw_answer(sock, seconds + 5) for sock in held]  # the cap's 503 at once, the timeout's 408
        errors = Counter((status, one_error(payload).split(":")[0]) for status, payload, _ in answers)
        assert set(errors) == {(503, "connections"), (408, "request headers")}, errors
        assert errors[408, "request headers"] <= 2 * cap  # held while the cap was full, then timed out
        assert server.get("/healthz")[0] == 200
        assert server.open_files() <= before + 2
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0


def test_sigterm_beside_a_trickling_client_answers_what_it_took_and_exits_0_quickly(sweep):
    server = Server([sweep / "transformer"], "graceful_timeout_s=5")
    trickling = server.connect()
    trickling.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
    trickling.sendall(b"Content-Length: 1000\r\n\r\n{")
    taken = {"texts": long_texts(8, 300), "model": "transformer", "beam_size": 4}
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.post, taken)
        time.sleep(0.5)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status, payload, _ = raw_answer(trickling)
        assert status == 503 and one_error(payload).startswith("server: stopping")
        assert in_flight.result(timeout=60)[0] == 200
        assert server.process.wait(5 + 10) == 0
    assert time.monotonic() - start < 5 + 5
    output = server.output()
    assert "Traceback" not in output and "stopped" in output


def test_past_the_graceful_timeout_a_waiting_request_gets_503_the_batch_begun_its_answer(sweep):
    server = Server([sweep / "transformer"], "graceful_timeout_s=0.5", "max_wait_ms=0")
    begun = {"texts": long_texts(16, 600), "model": "transformer", "beam_size": 8, "split_sentences": False}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(server.post, begun, timeout=300)  # decoded for seconds
        time.sleep(1.0)
        waiting = pool.submit(server.post, HONEST, timeout=300)  # other options: it waits for the next batch
        assert until(lambda: server.get("/healthz")[1]["queue"] == 1, 10) and not first.done()
        server.process.send_signal(signal.SIGTERM)
        status, payload, _ = waiting.result(timeout=300)
        assert status == 503 and one_error(payload).startswith("server: stopping")
        status, body, _ = first.result(timeout=300)
        assert status == 200 and len(body["translations"]) == 16
        assert server.process.wait(300) == 0
    assert "Traceback" not in server.output()


# 7. Answers too large


def test_an_answer_over_max_answer_kb_is_refused_before_decoding(server):
    big = {"texts": long_texts(4, 1900), "model": "transformer", "attention": True}
    start = time.monotonic()
    status, payload, _ = server.post(big)
    assert status == 413 and time.monotonic() - start < 5
    message = one_error(payload)
    assert message.startswith("answer:") and "max_answer_kb" in message and "leave out attention" in message
    status, body, _ = server.post({**big, "attention": False, "split_sentences": False})
    assert status == 200  # the same texts without their maps are small
    status, body, headers = server.post({**HONEST, "attention": True})
    assert status == 200 and int(headers["content-length"]) < 1024 * 1024
    for weights in body["translations"][0]["attention"]["maps"].values():
        assert all(round(w, 4) == w for row in weights for w in row)  # rounded to 4 places


# 8. One bad text


def test_a_lone_surrogate_gets_422_and_the_honest_request_beside_it_its_translation(server):
    busy = {"texts": long_texts(16, 400, seed=1), "model": "transformer", "beam_size": 8, "split_sentences": False}
    bad = b'{"texts": ["Ein Hund", "\\ud800 Hund"], "model": "transformer"}'
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(server.post, busy)  # the worker is busy: the next two wait in the queue together
        time.sleep(0.5)
        surrogate, honest = pool.submit(server.post, bad), pool.submit(server.post, HONEST)
        status, payload, _ = surrogate.result(timeout=120)
        assert status == 422 and one_error(payload).startswith("texts[1]: a lone surrogate (U+D800)")
        status, body, _ = honest.result(timeout=120)
        assert status == 200 and body["translations"][0]["text"]
        assert first.result(timeout=120)[0] == 200


def fake_served(monkeypatch):
    """One model whose decoding fails on any text holding "boom" (translate_full replaced)."""
    import translate.serving.batcher as batcher_module

    def translate_full(model, tokenizer, texts, options, language=None, names=None):
        if any("boom" in text for text in texts):
            raise ValueError("boom: an internal detail")
        return [Translation(text.upper(), -1.0, [(text.upper(), -1.0)]) for text in texts]

    monkeypatch.setattr(batcher_module, "translate_full", translate_full)
    cfg = SimpleNamespace(data=SimpleNamespace(src_lang="de"))
    return {"m": SimpleNamespace(model=SimpleNamespace(has_attention=False), tokenizer=None, cfg=cfg)}


def test_a_failed_batch_is_decoded_again_request_by_request(monkeypatch):
    models = fake_served(monkeypatch)
    loop = asyncio.new_event_loop()
    try:
        batcher = Batcher(models, max_queue=8, batch_tokens=10**6, max_wait=0)
        jobs = [Job("m", texts, DecodingOptions(), loop) for texts in (["ein"], ["boom", "zwei"], ["drei"])]
        batcher.decode(jobs)
        results = loop.run_until_complete(asyncio.gather(*(job.future for job in jobs), return_exceptions=True))
    finally:
        loop.close()
    assert [r.text for r in results[0]] == ["EIN"] and [r.text for r in results[2]] == ["DREI"]
    assert isinstance(results[1], DecodingFailed) and batcher.requests == 2


def test_a_request_that_fails_gets_500_without_internals(monkeypatch):
    from fastapi.testclient import TestClient

    models = fake_served(monkeypatch)
    batcher = Batcher(models, max_queue=8, batch_tokens=10**6, max_wait=0)
    app = create_app(models, batcher, DecodingOptions())

    @app.get("/raise")
    async def raising():
        raise RuntimeError("an internal detail")

    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        response = client.post("/v1/translate", json={"texts": ["boom"]})
        assert response.status_code == 500 and "internal detail" not in response.text
        assert one_error(response.json()).startswith("internal error:")
        assert client.post("/v1/translate", json={"texts": ["ein"]}).json()["translations"][0]["text"] == "EIN"
        response = client.get("/raise")
        assert response.status_code == 500 and "internal detail" not in response.text
        assert one_error(response.json()) == "internal error: GET '/raise' failed; see the server's log"


# 9. The comparison's figure


def test_the_comparisons_figure_is_drawn_once_at_start_up(server):
    timings, figures = [], []
    for _ in range(5):
        start = time.monotonic()
        status, png, headers = server.get("/v1/comparison.png")
        timings.append(time.monotonic() - start)
        figures.append(png)
        assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
    # served from memory: drawing it took 0.25 s a request here (0.8 s with 100 length buckets, 20 s with 4,000)
    assert len(set(figures)) == 1 and sorted(timings)[2] < 0.1, timings


# 10. One error shape


def test_every_error_status_answers_the_one_json_shape(server):
    answers = {
        400: server.post(b'{"texts": ["\xff"], "model": "rnn"}'),
        403: server.post(HONEST, headers={"Origin": "http://evil.example"}),
        404: server.get("/no/such/route"),
        405: server.get("/v1/translate"),
        413: server.post({"texts": ["a"] * 65, "model": "rnn"}),
        421: server.get("/healthz", headers={"Host": "evil.example"}),
        422: server.post(b"{not json"),
    }
    answers[404] = server.post({"texts": ["a"], "model": "nope"})
    for status, (got, payload, headers) in answers.items():
        assert got == status and headers["content-type"] == "application/json", (status, payload)
        one_error(payload)
    assert "use POST" in answers[405][1]["error"]
    with server.connect() as sock:  # not HTTP at all: uvicorn's own 400, in the same shape
        sock.sendall(b"NOT HTTP\r\n\r\n")
        status, payload, _ = raw_answer(sock)
    assert status == 400 and one_error(payload).startswith("request: not HTTP/1.1")


# The HTTP API fuzzed from its own schema


def test_fuzzing_the_api_from_its_openapi_schema_gets_documented_json_answers(sweep):
    """About 200 requests Schemathesis generates from /openapi.json, valid and invalid: each answer has a
    documented status and content type, matches its schema, and every error is in the one JSON shape."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    server = Server([sweep / "transformer"], "max_texts=4", "max_chars=40", "max_beam=2", "max_wait_ms=0")
    base = f"http://127.0.0.1:{server.port}"
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    statuses = Counter()
    try:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))

        quiet = list(HealthCheck)  # a live server is slow to hypothesis' taste; that is expected

        @settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=quiet)
        @given(case=cases)
        def answers_as_documented(case):
            response = case.call(base_url=base, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks)
            if response.status_code >= 400:
                assert response.status_code in DOCUMENTED
                one_error(response.json())

        answers_as_documented()
        assert server.get("/healthz")[0] == 200
        assert sum(statuses.values()) >= 150 and statuses[200] and len(statuses) > 2, statuses
    finally:
        assert server.stop() == 0
        assert "Traceback" not in server.output()
