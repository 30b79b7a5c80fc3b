"""Requests from many clients decoded together: a bounded queue and one worker thread that batches them.

    batcher = Batcher(models, decoding, max_queue=64, batch_tokens=6000, max_wait=0.005)
    batcher.start()
    job = Job("transformer", ["Ein Hund läuft."], Options(beam_size=5), loop)
    batcher.submit(job)            # QueueFull when max_queue requests wait: the server answers 503
    translations = await job.future
    batcher.stop()                 # takes no more, finishes what waits, then returns

The worker takes the oldest request, then every waiting request for the same model and decoding options
until `batch_tokens` (estimated source tokens × beam) or, while clients send concurrently (the last batch held
several requests), `max_wait` seconds have passed; a lone client pays no wait.  It decodes them as one call of
the inference API (`translate_full`; search sorts and batches them by length again).  A
request whose client went away is cancelled: it leaves the queue at once, or is dropped from its batch.
With `split_sentences` a text of several sentences is translated sentence by sentence, by the rules of the
model's source language (its run's data.src_lang), the translations joined by a space.
"""

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from translate.decoding.inference import Translation, translate_full

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_GUESS = 4  # a subword piece is about this many characters: the budget's estimate


class QueueFull(Exception):
    """max_queue requests are waiting: come back later (HTTP 503 with Retry-After)."""


@dataclass(frozen=True)
class Options:
    beam_size: int = 1
    n_best: int = 1
    length_penalty: float = 0.6
    attention: bool = False
    split_sentences: bool = True  # each text sentence by sentence (the server's eval.split_sentences by default)


@dataclass(eq=False)
class Job:
    model: str
    texts: list[str]
    options: Options
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(init=False)
    cancelled: bool = False

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
    def __init__(self, models: dict, decoding: dict, max_queue: int, batch_tokens: int, max_wait: float):
        """`models`: name -> ServedModel; `decoding`: the EvalConfig settings every request shares
        (batch_tokens, max_len_ratio, max_len_offset)."""
        self.models, self.decoding = models, decoding
        self.max_queue, self.batch_tokens, self.max_wait = max_queue, batch_tokens, max_wait
        self.queue: deque[Job] = deque()
        self.changed = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="translate-batcher", daemon=True)
        self.batches = self.requests = 0  # decoded so far, for /healthz
        self.last_batch = 0  # requests in the last batch: more than one means clients are sending concurrently

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

    def cancel(self, job: Job) -> None:
        """The client went away: free its place in the queue, or drop it from the batch being formed."""
        with self.changed:
            job.cancelled = True
            if job in self.queue:
                self.queue.remove(job)

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
            return [job for job in batch if not job.cancelled]

    def run(self) -> None:
        torch.set_grad_enabled(False)
        while (batch := self.next_batch()) is not None:
            if batch:
                self.decode(batch)

    def decode(self, batch: list[Job]) -> None:
        first = batch[0]
        served, options = self.models[first.model], first.options
        ec = SimpleNamespace(
            **self.decoding,
            beam_size=options.beam_size,
            n_best=options.n_best,
            length_penalty=options.length_penalty,
        )
        texts = [text for job in batch for text in job.texts]
        language = served.cfg.data.src_lang if options.split_sentences else None
        try:
            results: list[Translation] = translate_full(
                served.model, served.tokenizer, texts, ec, attention=options.attention, language=language
            )
        except Exception as e:  # a failed batch fails its requests, never the server
            log.warning("a batch of %d texts for %s failed: %s: %s", len(texts), first.model, type(e).__name__, e)
            for job in batch:
                job.settle(error=e)
            return
        start = 0
        for job in batch:
            job.settle(results[start : start + len(job.texts)])
            start += len(job.texts)
        self.batches, self.requests, self.last_batch = self.batches + 1, self.requests + len(batch), len(batch)
