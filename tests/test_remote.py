"""Downloads and the hub are data, never instructions: https only, capped in size and time, checked against
their SHA-256 (also when cached), only what is asked for, and the hub only at a pinned commit.

Every download test talks to a real HTTP server on 127.0.0.1 (allowed by TRANSLATE_ALLOW_LOCAL_HTTP=1)."""

import gzip
import hashlib
import http.server
import threading
import time
from functools import partial

import pytest

from translate.config.schema import DataConfig
from translate.data import remote
from translate.data.corpus import CorpusError
from translate.data.pipeline import load_split, split_source
from translate.data.remote import HubSplit, download_file

SPLITS = {"train": 5, "val": 2, "test": 3}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the server's directory, or a `routes` entry (path -> function of the handler); logs each path."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            return super().do_GET()
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(root directory, base URL, server) with http to 127.0.0.1 allowed; server.paths, server.routes."""
    monkeypatch.setenv(remote.LOCAL_HTTP_ENV, "1")
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    srv.paths, srv.routes = [], {}
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_port}", srv
    srv.shutdown()
    srv.server_close()


def redirect(location):
    def route(h):
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def stream(body: bytes, pause: float = 0.0, length: int | None = None, seconds: float = 5.0):
    """Send `body` again and again (for at most `seconds`), after a Content-Length of `length` if given."""

    def route(h):
        h.send_response(200)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        end = time.monotonic() + seconds
        while True:
            h.wfile.write(body)
            h.wfile.flush()
            if time.monotonic() >= end:
                return
            time.sleep(pause)

    return route


def toy_corpus(directory):
    for split, n in SPLITS.items():
        for lang, word in (("de", "satz"), ("en", "sentence")):
            (directory / f"{split}.{lang}.gz").write_bytes(
                gzip.compress("".join(f"{word} {i}\n" for i in range(n)).encode())
            )


def data_cfg(base, **kw):
    return DataConfig(**{"url": base + "/{split}.{lang}.gz", "download_dir": "dl", "test_split": "test", **kw})


@pytest.fixture
def project(tmp_path, monkeypatch):
    """No local corpus anywhere: resolve_data_dir downloads into <project>/dl."""
    monkeypatch.setattr(remote, "SHARED_MULTI30K", tmp_path / "no-shared")
    monkeypatch.setattr(remote, "PROJECT_ROOT", tmp_path / "project")
    monkeypatch.delenv(remote.DATA_DIR_ENV, raising=False)
    return tmp_path / "project" / "dl"


def refused(call, *patterns: str) -> str:
    """The one-line CorpusError of `call`, checked to contain each pattern."""
    with pytest.raises(CorpusError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


def nothing_left(directory):
    assert not directory.exists() or list(directory.iterdir()) == []


def test_download_once_and_check_the_cache(server, project):
    root, base, srv = server
    toy_corpus(root)
    digest = hashlib.sha256((root / "train.de.gz").read_bytes()).hexdigest()
    cfg = data_cfg(base, sha256={"train.de.gz": digest})
    assert load_split(cfg, "test").tgt[2] == "sentence 2"
    assert list(split_source(cfg, "train"))[4] == ("satz 4", "sentence 4")
    assert (project / "train.de.gz").exists() and not (project / "val.de.gz").exists()
    (root / "train.de.gz").unlink()  # a second run must not ask the server again
    before = len(srv.paths)
    assert list(split_source(cfg, "train"))[0] == ("satz 0", "sentence 0")
    assert len(srv.paths) == before


def test_only_the_split_asked_for_is_fetched(server, project):
    root, base, srv = server
    toy_corpus(root)
    cfg = data_cfg(base)
    assert len(load_split(cfg, "test")) == 3
    assert srv.paths == ["/test.de.gz", "/test.en.gz"]
    load_split(cfg, "valid")
    assert srv.paths[2:] == ["/val.de.gz", "/val.en.gz"] and not (project / "train.de.gz").exists()


def test_a_tampered_cache_is_refused(server, project):
    root, base, _ = server
    toy_corpus(root)
    digest = hashlib.sha256((root / "test.de.gz").read_bytes()).hexdigest()
    cfg = data_cfg(base, sha256={"test.de.gz": digest})
    load_split(cfg, "test")
    cached = project / "test.de.gz"
    cached.write_bytes(gzip.compress(b"ein anderer satz\nnoch einer\ndrei\n"))
    refused(lambda: load_split(cfg, "test"), f"the cached file at {cached} does not match", "delete it", "data.sha256")
    refused(lambda: download_file(base + "/test.de.gz", cached, digest), f"the cached file at {cached}")
    cached.unlink()  # deleting it downloads it again
    assert load_split(cfg, "test").src[0] == "satz 0"


def test_checksum_mismatch_keeps_nothing(tmp_path, server):
    root, base, _ = server
    (root / "f.gz").write_bytes(gzip.compress(b"x\n"))
    refused(
        lambda: download_file(base + "/f.gz", tmp_path / "out" / "f.gz", sha256="00ff"),
        "/f.gz: SHA-256 ",
        "does not match the expected 00ff",
        "fix data.sha256",
    )
    nothing_left(tmp_path / "out")


def test_http_errors_name_url_and_fix(tmp_path, server):
    _, base, _ = server
    refused(
        lambda: download_file(base + "/absent.gz", tmp_path / "out" / "absent.gz"),
        base + "/absent.gz: download failed (HTTPError: HTTP Error 404",
        "set data.dir",
    )
    nothing_left(tmp_path / "out")


def test_plain_http_needs_the_loopback_switch(tmp_path, server, monkeypatch):
    root, base, srv = server
    (root / "f.gz").write_bytes(b"data")
    monkeypatch.delenv(remote.LOCAL_HTTP_ENV)
    dest = tmp_path / "out" / "f.gz"
    refused(
        lambda: download_file(base + "/f.gz", dest),
        base + "/f.gz: only https",
        "TRANSLATE_ALLOW_LOCAL_HTTP=1",
        "https://",
    )
    monkeypatch.setenv(remote.LOCAL_HTTP_ENV, "1")
    for url in ("http://example.invalid/f.gz", "ftp://127.0.0.1/f.gz", "file:///etc/passwd"):
        refused(lambda url=url: download_file(url, dest), f"{url}: only https downloads are allowed", "data.dir")
    assert srv.paths == [] and not dest.exists()
    assert download_file(base + "/f.gz", dest).read_bytes() == b"data"


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/f.gz", "file:///etc/passwd", "http://example.invalid/f.gz"])
def test_redirect_to_another_scheme_is_refused(tmp_path, server, target):
    _, base, srv = server
    srv.routes["/moved"] = redirect(target)
    refused(
        lambda: download_file(base + "/moved", tmp_path / "out" / "f.gz"),
        f"{base}/moved: redirected to {target}: only https",
    )
    assert srv.paths == ["/moved"]
    nothing_left(tmp_path / "out")


def test_redirects_are_followed_a_few_times_only(tmp_path, server):
    root, base, srv = server
    (root / "f.gz").write_bytes(b"data")
    srv.routes["/moved"] = redirect("/f.gz")
    assert download_file(base + "/moved", tmp_path / "out" / "f.gz").read_bytes() == b"data"
    srv.routes["/a"], srv.routes["/b"] = redirect("/b"), redirect(base + "/a")
    srv.paths.clear()
    refused(
        lambda: download_file(base + "/a", tmp_path / "out" / "g.gz"), f"more than {remote.MAX_REDIRECTS} redirects"
    )
    assert len(srv.paths) == remote.MAX_REDIRECTS + 1
    nothing_left(tmp_path / "out" / "g.gz")


def test_an_announced_huge_file_is_refused_at_once(tmp_path, server):
    _, base, srv = server
    srv.routes["/huge"] = stream(b"\0" * 1024, pause=0.1, length=10**12)
    start = time.monotonic()
    refused(
        lambda: download_file(base + "/huge", tmp_path / "out" / "f.gz", max_mb=1),
        "/huge: larger than data.max_download_mb=1",
        "announces 1,000,000,000,000 bytes",
        "raise data.max_download_mb",
    )
    assert time.monotonic() - start < 1
    nothing_left(tmp_path / "out")


def test_an_endless_stream_stops_at_the_byte_cap(tmp_path, server):
    _, base, srv = server
    srv.routes["/endless"] = stream(b"\0" * 8192)
    refused(
        lambda: download_file(base + "/endless", tmp_path / "out" / "f.gz", max_mb=0.05),
        "/endless: larger than data.max_download_mb=0.05",
    )
    nothing_left(tmp_path / "out")


def test_a_trickle_stops_at_the_deadline(tmp_path, server):
    _, base, srv = server
    srv.routes["/trickle"] = stream(b"x", pause=0.02)
    start = time.monotonic()
    refused(
        lambda: download_file(base + "/trickle", tmp_path / "out" / "f.gz", minutes=0.01),
        "/trickle: not downloaded within data.download_minutes=0.01",
        "raise data.download_minutes",
    )
    assert 0.6 <= time.monotonic() - start < 1.5
    nothing_left(tmp_path / "out")


def test_a_connection_closed_early_keeps_nothing(tmp_path, server):
    _, base, srv = server
    srv.routes["/short"] = stream(b"0123456789", length=1000, seconds=0)  # writes once, then closes
    refused(
        lambda: download_file(base + "/short", tmp_path / "out" / "f.gz"),
        "/short: download failed (IncompleteRead: the connection closed after 10 of 1,000 bytes)",
        "set data.dir",
    )
    nothing_left(tmp_path / "out")


def test_the_hub_needs_a_pinned_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    cfg = DataConfig(hub="someone/some-corpus", valid_split="validation")
    refused(
        lambda: split_source(cfg, "train"),
        "someone/some-corpus: refusing to load a Hugging Face dataset at an unpinned revision",
        "data.hub_revision=<commit sha>",
        "Files and versions",
    )
    refused(
        lambda: HubSplit("someone/some-corpus", None, "train", "de", "en", revision="main"),
        "data.hub_revision=main is not a commit sha",
    )


def test_a_pinned_hub_load_passes_the_revision(tmp_path, monkeypatch):
    import datasets

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": [{"de": "a", "en": "b"}]})})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)
    sha = "0123456789abcdef0123456789abcdef01234567"
    cfg = DataConfig(hub="someone/some-corpus", hub_config="de-en", hub_revision=sha)
    assert list(split_source(cfg, "train")) == [("a", "b")]
    assert calls == [(("someone/some-corpus", "de-en"), {"revision": sha})]
