"""Serve trained runs over HTTP: `translate serve run=<run dir> ['runs=[<run dir>, …]'] [port=8000]`.

FastAPI on uvicorn, 127.0.0.1:8000 by default: the JSON API (/v1/models, /v1/translate, /healthz, OpenAPI at
/docs) and, at /, a page comparing the runs' translations and attention (translate/serving/app.py).
Requests are batched by one worker (translate/serving/batcher.py).  SIGTERM or Ctrl-C: no new requests,
those in flight finish (for up to graceful_timeout_s), exit 0.

Every connection is bounded (docs/security.md, "The server's bounds"): the connections (max_connections, header
and write timeouts: translate/serving/connections.py), the bodies and answers (max_body_kb, body_timeout_s,
max_answer_kb: app.py), the requests at once (limit_concurrency) and the shutdown (graceful_timeout_s).
"""

import logging
import signal

import hydra
import torch
from omegaconf import DictConfig

from translate.config.rules import check_config
from translate.config.schema import CONFIG_DIR, register_configs
from translate.decoding.options import DecodingOptions
from translate.runtime.errors import ConfigError, one_line_errors
from translate.serving.app import Hosts, Limits, create_app, is_loopback, report_figure
from translate.serving.batcher import Batcher
from translate.serving.connections import ConnectionBounds, backlog, default_max_connections, protocol_with
from translate.serving.registry import comparison_report, load_models

log = logging.getLogger("translate.serve")
register_configs()


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="serve")
@one_line_errors
def main(cfg: DictConfig) -> None:
    import uvicorn

    check_config(cfg)
    runs = ([cfg.run] if cfg.run else []) + list(cfg.runs)
    if not runs:
        raise ConfigError('no run to serve: make serve RUN=<run dir> [RUNS="<run> …"]')
    ec = cfg.eval
    models = load_models(runs, ec.checkpoint, ec.device)
    batcher = Batcher(models, cfg.max_queue, cfg.batch_tokens, cfg.max_wait_ms / 1000)
    limits = Limits(
        cfg.max_texts, cfg.max_chars, cfg.max_body_kb * 1024, cfg.max_beam, cfg.max_answer_kb * 1024, cfg.body_timeout_s
    )
    defaults = DecodingOptions.of(ec, n_best=1)  # a request's own beam, n-best, penalty and splitting go on top
    report = comparison_report(models)
    figure = comparison_figure(report)
    hosts = Hosts.bound_to(cfg.host, cfg.allowed_hosts)
    app = create_app(models, batcher, defaults, limits, report, figure, hosts)
    connections = cfg.max_connections or default_max_connections()
    bounds = ConnectionBounds(connections, cfg.header_timeout_s, cfg.max_header_kb * 1024, cfg.write_timeout_s)
    if not is_loopback(cfg.host):
        log.warning("serving on %s: every machine that reaches it can use it (HOST=127.0.0.1 keeps it local)", cfg.host)
    print(f"serving {', '.join(models)} on http://{cfg.host}:{cfg.port}/ (API: /docs); Ctrl-C stops", flush=True)
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then raises the signal again: with these
    # handlers in place of the defaults, that second raise ends nothing and the command exits 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        http=protocol_with(bounds),
        limit_concurrency=cfg.limit_concurrency,
        backlog=backlog(connections),
        timeout_graceful_shutdown=cfg.graceful_timeout_s,
        ws="none",  # the API has no WebSocket route: an Upgrade stays plain HTTP, under the bounds above
    )
    print("stopped", flush=True)


def comparison_figure(report: dict | None) -> bytes | None:
    """The comparison's figure, drawn here, once, before serving (drawing it per request held the event loop)."""
    if report is None:
        return None
    try:
        return report_figure(report)
    except Exception as e:  # the API serves without it; /v1/comparison.png says so
        log.warning("the comparison's figure could not be drawn (%s: %s); /v1/comparison.png answers 404", type(e), e)
        return None


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
