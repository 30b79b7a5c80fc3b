"""Requests from many clients decoded together: a bounded queue and one worker thread that batches them.

    batcher = Batcher(models, max_queue=64, batch_tokens=6000, max_wait=0.005)
    batcher.start()
    job = Job("transformer", ["Ein Hund läuft."], DecodingOptions(beam_size=5), loop)
    batcher.submit(job)            # QueueFull when max_queue requests wait: the server answers 503
    translations = await job.future
    batcher.stop()                 # takes no more, finishes what waits, then returns

The worker takes the oldest request, then every waiting request for the same model and decoding options
until `batch_tokens` (estimated source tokens × beam) or, while clients send concurrently (the last batch held
several requests), `max_wait` seconds have passed; a lone client pays no wait.  It decodes them as one call of
the inference API (`translate_full`; search sorts and batches them by length again).  A
request whose client went away is cancelled: it leaves the queue at once, or is dropped from its batch.
A batch that fails is decoded again request by request, so that only the request that fails gets the error
(DecodingFailed; its traceback goes to the log).  `attention_bytes` bounds, before decoding, the attention maps
of a request's answer; `answer_bytes` measures an answer before its JSON is built.
With options.split_sentences a text of several sentences is translated sentence by sentence, by the rules of the
model's source language (its run's data.src_lang), the translations joined by a space.
"""

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from translate.data.tokenizer import EOS
from translate.decoding.attention_maps import attention_maps
from translate.decoding.inference import Translation, encode_sources, translate_full
from translate.decoding.options import DecodingOptions
from translate.decoding.search import source_limit

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_GUESS = 4  # a subword piece is about this many characters: the budget's estimate
BYTES_PER_WEIGHT = 8  # an attention weight in JSON, rounded to 4 places, and its separator: "0.1234, "
BYTES_PER_ROW = 4  # a map row's brackets and separator
BYTES_PER_PIECE = 70  # a piece (at most 16 characters of up to 4 bytes), quoted, and its separator
BYTES_PER_CHAR = 4  # a character of a translation in UTF-8, at most
BYTES_PER_ENTRY = 64  # an n-best entry's keys, score and punctuation, about


class QueueFull(Exception):
    """max_queue requests are waiting: come back later (HTTP 503 with Retry-After)."""


class DecodingFailed(Exception):
    """This request's texts could not be translated, alone (HTTP 500; the cause is in the log)."""


@dataclass(eq=False)
class Job:
    model: str
    texts: list[str]
    options: DecodingOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(init=False)
    cancelled: bool = False
    started: bool = False  # in the batch being decoded: it will be answered

    def __post_init__(self):
        self.future = self.loop.create_future()

    @property
    def key(self) -> tuple:
        return self.model, self.options

    @property
    def tokens(self) -> int:
        return sum(len(t) // CHARS_PER_TOKEN_GUESS + 2 for t in self.texts) * self.options.beam_size

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """Hand the result (or error) to the waiting request on its event loop."""

        def done():
            if not self.future.done():
                self.future.set_exception(error) if error else self.future.set_result(result)

        self.loop.call_soon_threadsafe(done)


class Batcher:
    def __init__(self, models: dict, max_queue: int, batch_tokens: int, max_wait: float):
        """`models`: name -> ServedModel; each job brings its decoding options."""
        self.models = models
        self.max_queue, self.batch_tokens, self.max_wait = max_queue, batch_tokens, max_wait
        self.queue: deque[Job] = deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="translate-batcher", daemon=True)
        self.batches = self.requests = 0  # decoded so far, for /healthz
        self.last_batch = 0  # requests in the last batch: more than one means clients are sending concurrently
        self.maps = {name: attention_maps_per_text(served.model) for name, served in models.items()}

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.changed:
            if self.stopping:
                raise QueueFull("the server is stopping")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"{len(self.queue)} requests are waiting (max_queue={self.max_queue})")
            self.queue.append(job)
            self.changed.notify()

    def cancel(self, job: Job) -> bool:
        """The client went away or the server stops: free the job's place in the queue, or drop it from the batch
        being formed (True); False when it is being decoded already (its result comes)."""
        with self.changed:
            if job.started:
                return False
            job.cancelled = True
            if job in self.queue:
                self.queue.remove(job)
            return True

    def depth(self) -> int:
        return len(self.queue)

    def stop(self) -> None:
        """Take no more requests, decode those waiting, end the worker."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
        self.thread.join()

    def next_batch(self) -> list[Job] | None:
        """The oldest waiting request and those that can join it (module docstring); None once stopped and empty."""
        with self.changed:
            while not self.queue and not self.stopping:
                self.changed.wait()
            if not self.queue:
                return None
            first = self.queue.popleft()
            wait = self.max_wait if self.last_batch > 1 else 0.0  # a lone client pays no wait
            batch, tokens, deadline = [first], first.tokens, time.monotonic() + wait
            while tokens < self.batch_tokens:
                same = next((job for job in self.queue if job.key == first.key), None)
                if same is not None:
                    self.queue.remove(same)
                    batch.append(same)
                    tokens += same.tokens
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    break
                self.changed.wait(left)
            batch = [job for job in batch if not job.cancelled]
            for job in batch:
                job.started = True
            return batch

    def run(self) -> None:
        torch.set_grad_enabled(False)
        while (batch := self.next_batch()) is not None:
            if batch:
                self.decode(batch)

    def decode(self, batch: list[Job]) -> None:
        """Decode a batch and settle its jobs; if it fails, each job again alone, so that only the failing one fails."""
        first = batch[0]
        try:
            results = self.translate(batch)
        except Exception as e:  # a failed batch fails its requests, never the server
            if len(batch) > 1:
                what = f"{type(e).__name__}: {e}"
                log.warning("a batch of %d requests for %s failed (%s); each alone", len(batch), first.model, what)
                for job in batch:
                    self.decode([job])
                return
            log.error("a request of %d texts for %s failed", len(first.texts), first.model, exc_info=e)
            first.settle(error=DecodingFailed(type(e).__name__))
            return
        start = 0
        for job in batch:
            job.settle(results[start : start + len(job.texts)])
            start += len(job.texts)
        self.batches, self.requests, self.last_batch = self.batches + 1, self.requests + len(batch), len(batch)

    def translate(self, batch: list[Job]) -> list[Translation]:
        """The translations of every text of the batch's jobs, in order, in one call of the inference API."""
        first = batch[0]
        served = self.models[first.model]
        texts = [text for job in batch for text in job.texts]
        return translate_full(served.model, served.tokenizer, texts, first.options, served.cfg.data.src_lang)

    def attention_bytes(self, job: Job) -> int:
        """The most bytes the job's answer with attention can take: for each text, every map of the model
        (attention_maps_per_text) with a row per target piece and a column per source piece, EOS included, and its
        translations; the source as the model reads it (tokenized, cut to its limit), the target as long as search
        lets it grow (max_len_ratio × source + max_len_offset, at most the model's max_positions).  Thread-safe:
        call it off the event loop."""
        served, maps = self.models[job.model], self.maps[job.model]
        if not maps:
            return 0
        model = served.model
        limit, most = source_limit(model), model.max_positions
        ratio, offset = job.options.max_len_ratio, job.options.max_len_offset
        total = 0
        for ids in encode_sources(model, served.tokenizer, job.texts, warn=False):  # decoding warns of cuts
            columns = (len(ids) if limit is None else min(len(ids), limit)) + 1
            rows = int(columns * ratio) + offset
            rows = (rows if most is None else min(rows, most)) + 1
            total += maps * rows * (columns * BYTES_PER_WEIGHT + BYTES_PER_ROW) + (rows + columns) * BYTES_PER_PIECE
            total += (job.options.n_best + 1) * (rows * BYTES_PER_PIECE + BYTES_PER_ENTRY)  # the text, its n-best
        return total


@torch.no_grad()
def attention_maps_per_text(model) -> int:
    """How many maps an answer with attention holds per text: the model's attention layers, each as the mean over
    heads and, with several heads, each head (attention_maps.py); 0 for a model without attention."""
    if not isinstance(model, torch.nn.Module) or not model.has_attention:
        return 0
    return len(attention_maps(model, [[EOS]], [[EOS]])[0])


def answer_bytes(results: list[Translation]) -> int:
    """About the size of an answer's JSON (a bound for its texts, the exact count of its attention weights), from
    the translations before the JSON is built."""
    total = 0
    for result in results:
        total += sum(len(text) * BYTES_PER_CHAR + BYTES_PER_ENTRY for text, _ in result.n_best)
        total += len(result.text) * BYTES_PER_CHAR + BYTES_PER_ENTRY
        record = result.attention or {}
        rows, columns = len(record.get("target", [])), len(record.get("source", []))
        total += len(record.get("maps", {})) * rows * (columns * BYTES_PER_WEIGHT + BYTES_PER_ROW)
        total += (rows + columns) * BYTES_PER_PIECE
    return total
