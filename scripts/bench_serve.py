"""The server against offline translation, in one run: requests/s and latency at 1, 8 and 32 clients.

    python scripts/bench_serve.py RUN_DIR [RUN_DIR ...] [--sentences 500] [--clients 1 8 32] [--out docs/bench/serving]

For each run: offline, the sentences translated as `make translate` does (one call of the inference API, batched
by length; sentences/s, median of --repeats) and one at a time (the latency of one sentence decoded alone); then
`translate serve` with every run loaded, its resident memory read from /proc, and for each number of
clients that many keep-alive connections (one asyncio loop: the load costs the shared cores little), each sending
one sentence per request through
the same sentences until each was sent --passes times: requests/s over the whole window and latency p50 / p99.
Every answer is checked against the offline translation.  Greedy decoding.  Writes <out>.json and <out>.md.
"""

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import proc_status_mib

from translate.data.corpus import SHARED_MULTI30K, read_lines
from translate.decoding.inference import load_run, translate_lines
from translate.decoding.options import DecodingOptions
from translate.evaluation.tables import markdown_table
from translate.runtime.allocator import preload_tcmalloc
from translate.runtime.host import describe_host, host_line

ROOT = Path(__file__).resolve().parents[1]


def offline(run: Path, sentences: list[str], repeats: int, alone: int) -> tuple[dict, list[str]]:
    model, tokenizer, cfg, _ = load_run(run, device="cpu")
    ec = DecodingOptions()
    translate_lines(model, tokenizer, sentences[:32], ec, language=cfg.data.src_lang)  # warm-up (oneDNN primitives)
    times, outputs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = translate_lines(model, tokenizer, sentences, ec, language=cfg.data.src_lang)
        times.append(time.perf_counter() - started)
    chunked = []  # 32 at a time: the most a server of 32 one-sentence clients can batch
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(sentences), 32):
            translate_lines(model, tokenizer, sentences[i : i + 32], ec, language=cfg.data.src_lang)
        chunked.append(time.perf_counter() - started)
    singles = []
    for text in sentences[:alone]:
        started = time.perf_counter()
        translate_lines(model, tokenizer, [text], ec, language=cfg.data.src_lang)
        singles.append(time.perf_counter() - started)
    figures = {
        "model": cfg.model.name,
        "offline_sentences_per_s": round(len(sentences) / statistics.median(times), 1),
        "offline_by_32_sentences_per_s": round(len(sentences) / statistics.median(chunked), 1),
        "alone_p50_ms": round(1000 * statistics.median(singles), 2),
    }
    return figures, outputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[Path], port: int) -> subprocess.Popen:
    listed = ",".join(f"'{r}'" for r in runs)
    command = [sys.executable, "-m", "translate", "serve", f"runs=[{listed}]", f"port={port}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended: {process.stdout.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not start in 300 s")


def memory_mib(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) of a process, MiB."""
    fields = proc_status_mib(pid, ("VmRSS", "VmHWM"))
    return {key: round(fields[key], 1) for key in ("VmRSS", "VmHWM")}


async def one_client(port: int, name: str, texts: list[str], part: list[int], results: list) -> None:
    """One keep-alive connection sending its share of the requests one after another (plain HTTP/1.1 on an
    asyncio stream: the load generator shares the machine's cores with the server, so it must cost little)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in part:
        body = json.dumps({"texts": [texts[i]], "model": name}).encode()
        head = "POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        started = time.perf_counter()
        writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status_line, *headers = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length:"))
        payload = json.loads(await reader.readexactly(length))
        results.append((i, int(status_line.split()[1]), payload, time.perf_counter() - started))
    writer.close()


def load(port: int, name: str, sentences: list[str], expected: list[str], clients: int, passes: int) -> dict:
    """`clients` connections sending one sentence per request, every sentence `passes` times in all."""
    jobs = [i for _ in range(passes) for i in range(len(sentences))]
    results: list = []

    async def all_clients():
        await asyncio.gather(*(one_client(port, name, sentences, jobs[k::clients], results) for k in range(clients)))

    started = time.perf_counter()
    asyncio.run(all_clients())
    window = time.perf_counter() - started
    latencies = sorted(seconds for *_, seconds in results)
    failed = sum(status != 200 for _, status, _, _ in results)
    wrong = sum(status == 200 and p["translations"][0]["text"] != expected[i] for i, status, p, _ in results)
    return {
        "clients": clients,
        "requests": len(jobs),
        "requests_per_s": round(len(jobs) / window, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
        "failed": failed,
        "differs_from_offline": wrong,
    }


def markdown(result: dict) -> str:
    rows = []
    for run in result["runs"]:
        for level in run["server"]:
            rows.append(
                [
                    run["name"],
                    level["clients"],
                    f"{level['requests_per_s']:.1f}",
                    f"{level['requests_per_s'] / run['offline_sentences_per_s']:.0%}",
                    f"{level['requests_per_s'] / run['offline_by_32_sentences_per_s']:.0%}",
                    f"{level['p50_ms']:.1f}",
                    f"{level['p99_ms']:.1f}",
                    f"{level['p50_ms'] / run['alone_p50_ms']:.2f}×" if level["clients"] == 1 else "",
                    level["failed"] + level["differs_from_offline"],
                ]
            )
    header = ["run", "clients", "requests/s", "of offline", "of 32 at a time", "p50 ms", "p99 ms", "p50 / alone"]
    header.append("failed or differ")
    offline_rows = [
        [r["name"], r["model"], f"{r['offline_sentences_per_s']:.1f}", f"{r['offline_by_32_sentences_per_s']:.1f}"]
        + [f"{r['alone_p50_ms']:.1f}"]
        for r in result["runs"]
    ]
    memory = result["server_memory_mib"]
    return "\n".join(
        [
            "# Serving benchmark",
            "",
            f"Host: {result['host_line']}.  `{result['command']}`, {result['date']}.",
            f"{result['sentences']} sentences of {result['source']}, one per request, greedy; each answer checked "
            "against the offline translation.",
            "",
            "Offline (`make translate`: one call of the inference API, batched by length; 32 sentences per call, the "
            "largest batch 32 one-sentence clients can make; one sentence alone):",
            "",
            markdown_table(["run", "model", "sentences/s", "32 at a time", "one alone, p50 ms"], offline_rows),
            "",
            f"Server (`make serve` with all {len(result['runs'])} runs loaded; resident memory after loading "
            f"{memory['loaded']['VmRSS']} MiB, peak over the benchmark {memory['after']['VmHWM']} MiB):",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--source", type=Path, default=SHARED_MULTI30K / "test_2016_flickr.de.gz")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--passes", type=int, default=1, help="each sentence sent this many times per level")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alone", type=int, default=100, help="sentences timed one at a time")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "serving")
    args = parser.parse_args()
    preload_tcmalloc()  # the allocator the commands (and so the server) run on
    sentences = read_lines(args.source)[: args.sentences]
    names = [run.name for run in args.runs]
    runs = []
    for run, name in zip(args.runs, names):
        figures, outputs = offline(run, sentences, args.repeats, args.alone)
        runs.append({"name": name, "run": str(run), **figures, "expected": outputs})
        print(f"offline {name}: {figures}", flush=True)
    port = free_port()
    server = start_server(args.runs, port)
    memory = {"loaded": memory_mib(server.pid)}
    try:
        for run in runs:  # warm-up: the server's first requests build its kernels
            load(port, run["name"], sentences[:32], run["expected"][:32], 4, 1)
        for run in runs:
            run["server"] = []
            for clients in args.clients:
                level = load(port, run["name"], sentences, run["expected"], clients, args.passes)
                run["server"].append(level)
                print(f"server {run['name']}: {level}", flush=True)
        memory["after"] = memory_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    for run in runs:
        del run["expected"]
    result = {
        "command": " ".join(["python", "scripts/bench_serve.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "host": describe_host(),
        "host_line": host_line(),
        "source": args.source.name,
        "sentences": len(sentences),
        "server_memory_mib": memory,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
