"""The server as a real process on 127.0.0.1 (translate serve), serving three small models trained on a
slice of Multi30k: every endpoint and every error over HTTP, the queue's limit, a client that goes away, SIGTERM
in flight, a load test whose every answer equals the offline translation, and the page in a real Chromium."""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_fixtures import FAMILIES, Server, until

from translate.data.corpus import SHARED_MULTI30K, read_lines
from translate.decoding.inference import load_run, translate_full
from translate.decoding.options import DecodingOptions

pytestmark = pytest.mark.slow  # trains three models, starts servers

GERMAN = "Ein Mann mit einem roten Hut fährt mit dem Fahrrad über eine Brücke."


@pytest.fixture(scope="module")
def server(sweep):
    server = Server([sweep / family for family in FAMILIES])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def offline(sweep):
    """Each run loaded in this process, for the translations the server must equal."""
    return {family: load_run(sweep / family, device="cpu")[:2] for family in FAMILIES}


def offline_translations(offline, family: str, texts: list[str], language: str | None = "de", **options):
    """What the server must answer: by default, like it, each text split into sentences (eval.split_sentences)."""
    model, tokenizer = offline[family]
    return translate_full(model, tokenizer, texts, DecodingOptions(**options), language)


def test_health_models_page_and_openapi(server, sweep):
    status, health, _ = server.get("/healthz")
    assert status == 200 and health["status"] == "ok" and health["models"] == list(FAMILIES)
    status, listing, _ = server.get("/v1/models")
    assert status == 200 and [m["name"] for m in listing["models"]] == list(FAMILIES)
    for m in listing["models"]:
        assert m["family"] == m["name"] and m["source_language"] == "de" and m["target_language"] == "en"
        assert m["step"] == 40 and m["parameters"] > 10_000 and isinstance(m["bleu"], float)
        assert m["has_attention"] == (m["family"] != "rnn")
    status, page, headers = server.get("/")
    assert status == 200 and b"where each model looks" in page and "text/html" in headers["content-type"]
    assert b"http://" not in page and b"https://" not in page  # no external assets: works offline
    status, docs, _ = server.get("/docs")
    assert status == 200 and b"swagger" in docs.lower()
    status, schema, _ = server.get("/openapi.json")
    assert {"/v1/translate", "/v1/models", "/healthz"} <= set(schema["paths"])


def test_translations_come_in_order_and_equal_the_offline_ones(server, offline):
    texts = read_lines(SHARED_MULTI30K / "test_2016_flickr.de.gz")[:5]
    for family in FAMILIES:
        status, body, _ = server.post({"texts": texts, "model": family, "beam_size": 3, "n_best": 2})
        assert status == 200 and body["model"] == family and len(body["translations"]) == 5
        expected = offline_translations(offline, family, texts, beam_size=3, n_best=2)
        for got, want in zip(body["translations"], expected):
            assert got["text"] == want.text and [h["text"] for h in got["n_best"]] == [t for t, _ in want.n_best]
            assert got["score"] == pytest.approx(want.score, abs=1e-3) and "attention" not in got


def test_attention_by_layer_and_head_or_a_clear_no(server):
    for family in FAMILIES:
        status, body, _ = server.post({"texts": [GERMAN], "model": family, "attention": True})
        assert status == 200
        translation = body["translations"][0]
        attention = translation["attention"]
        if family == "rnn":
            assert attention is None and body["attention_note"].startswith("no attention")
            continue
        names = set(attention["maps"])
        expected = {"alignment"} if family == "rnn_attention" else {"layer1", "layer2"}
        expected |= {f"layer{i}/head{h}" for i in (1, 2) for h in (1, 2)} if family == "transformer" else set()
        assert names == expected
        rows, cols = len(attention["target"]), len(attention["source"])
        assert attention["source"][-1] == attention["target"][-1] == "</s>"
        for weights in attention["maps"].values():
            assert len(weights) == rows and all(len(row) == cols for row in weights)
            assert all(abs(sum(row) - 1) < 1e-2 for row in weights)


@pytest.mark.parametrize(
    "body, status, found",
    [
        ({"texts": ["a"], "model": "nope"}, 404, "model: no model 'nope'"),
        ({"texts": ["a"]}, 422, "model: required when several are loaded"),
        ({"texts": ["a"] * 65, "model": "rnn"}, 413, "texts: 65 in one request; at most 64 (max_texts)"),
        ({"texts": ["a", "b" * 2001], "model": "rnn"}, 413, "texts[1]: 2001 characters; at most 2000 (max_chars)"),
        ({"texts": [], "model": "rnn"}, 422, "texts:"),
        ({"texts": "Ein Hund", "model": "rnn"}, 422, "texts:"),
        ({"texts": ["a"], "model": "rnn", "beam_size": 0}, 422, "beam_size:"),
        ({"texts": ["a"], "model": "rnn", "beam_size": 17}, 422, "beam_size: 17; at most 16"),
        ({"texts": ["a"], "model": "rnn", "n_best": 3, "beam_size": 2}, 422, "n_best: 3 > beam_size 2"),
        ({"texts": ["a"], "model": "rnn", "length_penalty": -1}, 422, "length_penalty:"),
        ({"texts": ["a"], "model": "rnn", "temperature": 2}, 422, "temperature: Extra inputs are not permitted"),
        (b"{not json", 422, "JSON"),
    ],
)
def test_every_error_is_one_json_line_naming_the_limit_or_field(server, body, status, found):
    got, payload, _ = server.post(body)
    assert got == status and found in payload["error"] and "\n" not in payload["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    big = json.dumps({"texts": ["a"], "model": "rnn", "pad": "x" * (2 << 20)}).encode()
    status, payload, _ = server.post(big)
    assert status == 413 and "max_body_bytes" in payload["error"]
    # chunked: no Content-Length to go by
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        s.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (256 << 10)
        try:
            for _ in range(8):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass
        assert s.recv(200).startswith(b"HTTP/1.1 413")


def long_request(family="transformer"):
    rng = random.Random(0)
    words = read_lines(SHARED_MULTI30K / "val.de.gz")[:400]
    texts = [" ".join(rng.choice(words) for _ in range(6))[:1900] for _ in range(64)]
    return {"texts": texts, "model": family, "beam_size": 16, "split_sentences": False}  # long texts, whole


def busiest_family(offline) -> str:
    """The family whose translations of the long texts are longest: decoding it keeps the worker busy (an
    early-training model may end every sentence at once; which one does depends on the host's arithmetic)."""
    texts = long_request()["texts"][:2]
    lengths = {f: sum(len(t.text) for t in offline_translations(offline, f, texts, language=None)) for f in FAMILIES}
    family = max(lengths, key=lengths.get)
    assert lengths[family] > 200, f"every model ends its long translations at once: {lengths}"
    return family


def test_a_full_queue_answers_503_with_retry_after_and_a_gone_client_keeps_no_slot(sweep, offline):
    family = busiest_family(offline)
    server = Server([sweep / f for f in FAMILIES], "max_queue=1", "max_wait_ms=0")
    try:
        with ThreadPoolExecutor(4) as pool:
            busy = pool.submit(server.post, long_request(family))  # the worker decodes this one for a while
            time.sleep(1.0)
            assert not busy.done(), busy.result()[:2]
            # a client that queues and goes away: its slot is freed
            gone = socket.create_connection(("127.0.0.1", server.port))
            body = json.dumps(long_request(family)).encode()
            gone.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            gone.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert until(lambda: server.get("/healthz")[1]["queue"] == 1)
            status, payload, headers = server.post({"texts": ["Ein Hund."], "model": family})
            assert status == 503 and headers.get("retry-after") == "1" and "max_queue=1" in payload["error"]
            gone.close()
            assert until(lambda: server.get("/healthz")[1]["queue"] == 0)
            assert not busy.done()  # the slot came free while the worker was still busy
            queued = pool.submit(server.post, {"texts": ["Ein Hund."], "model": family})
            assert busy.result(timeout=300)[0] == 200 and queued.result(timeout=300)[0] == 200
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(sweep, offline):
    family = busiest_family(offline)
    server = Server([sweep / family])
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(server.post, long_request(family))
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        status, body, _ = in_flight.result(timeout=300)
        assert status == 200 and len(body["translations"]) == 64
        assert server.process.wait(60) == 0
    with pytest.raises(OSError):
        server.get("/healthz")


def test_load_thousands_of_requests_none_fails_each_equals_offline(server, offline):
    sentences = read_lines(SHARED_MULTI30K / "test_2016_flickr.de.gz")[:200]
    expected = {
        family: [t.text for t in offline_translations(offline, family, sentences)] for family in ("rnn", "transformer")
    }
    jobs = [(family, i) for i in range(len(sentences)) for family in expected] * 5  # 2,000 requests
    random.Random(1).shuffle(jobs)
    failures, mismatches, lock = [], [], threading.Lock()

    def client(part):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for family, i in part:
            body = json.dumps({"texts": [sentences[i]], "model": family})
            connection.request("POST", "/v1/translate", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            with lock:
                if response.status != 200:
                    failures.append((response.status, payload))
                elif payload["translations"][0]["text"] != expected[family][i]:
                    mismatches.append((family, i, payload["translations"][0]["text"], expected[family][i]))
        connection.close()

    clients = 32
    threads = [threading.Thread(target=client, args=(jobs[k::clients],)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and not mismatches, (failures[:3], mismatches[:3])
    health = server.get("/healthz")[1]
    assert health["requests_decoded"] >= len(jobs) and health["batches"] < len(jobs)  # batched


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(
    (CHROMIUM is None or DRIVER is None) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver; .ci/run does)",
)
def test_the_page_in_a_real_browser_shows_three_translations_and_drawn_attention(server, offline):
    if CHROMIUM is None or DRIVER is None:  # CI=true: the browser test must run, so a missing browser fails it
        missing = " and ".join(name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not path)
        pytest.fail(f"CI=true but {missing} not found; apt install chromium chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        browser.find_element(By.ID, "source").send_keys(GERMAN)
        browser.find_element(By.ID, "go").click()
        shown = lambda b: [e.text for e in b.find_elements(By.CSS_SELECTOR, ".model-col .translation")]  # noqa: E731
        WebDriverWait(browser, 60).until(lambda b: all(t not in ("", "…") for t in shown(b)))
        expected = [offline_translations(offline, f, [GERMAN], language=None)[0].text for f in FAMILIES]  # whole
        assert shown(browser) == [" ".join(text.split()) for text in expected]  # HTML shows runs of spaces as one
        canvases = browser.find_elements(By.CSS_SELECTOR, "canvas.heatmap")
        assert len(canvases) == 2 and all(int(c.get_attribute("data-drawn")) > 4 for c in canvases)
        painted = browser.execute_script(
            "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 200) n++; return n;",
            canvases[1],
        )
        assert painted > 100  # blue cells, not a blank canvas
        column = browser.find_element(By.CSS_SELECTOR, '.model-col[data-model="rnn"]')
        assert "no attention: the decoder sees one fixed vector" in column.text
        heads = [o.text for o in canvases[1].find_element(By.XPATH, "..").find_elements(By.TAG_NAME, "option")]
        assert "layer2, mean of heads" in heads and "layer2, head2" in heads
        browser.find_element(By.ID, "tab-comparison").click()
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script("return document.getElementById('comparison-figure').naturalWidth") > 0
        )
        assert "rnn_attention" in browser.find_element(By.ID, "comparison-table").text
    finally:
        browser.quit()
