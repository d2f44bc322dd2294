"""`lmp serve`: the endpoint on this machine's Ray, or on the cluster at ray.address, until
interrupted (or, with --detach, left running on the cluster: what the serve flow does). Binds
loopback unless told otherwise; anywhere else only with a bearer token."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from lm_pipeline import tracking
from lm_pipeline.cluster import init_ray, worker_env
from lm_pipeline.config import Config, ConfigError
from lm_pipeline.serving import source
from lm_pipeline.serving.app import TOKEN_ENV, Settings, application
from lm_pipeline.serving.protocol import needs_token

log = logging.getLogger(__name__)

APP_NAME = "lm-pipeline"


def settings_of(cfg: Config, model: str | None = None) -> Settings:
    serve = cfg.serve
    return Settings(source=model or serve.model or f"models:/{cfg.register_.model_name}@champion",
                    tracking_uri=tracking.shown_uri(cfg), registered_name=cfg.register_.model_name,
                    endpoint=endpoint_of(serve.host, serve.port),
                    device=serve.device, max_tokens=serve.max_tokens, max_n=serve.max_n,
                    max_batch_size=serve.max_batch_size, batch_wait_s=serve.batch_wait_ms / 1000,
                    follow_interval_s=serve.follow_interval_s, log_interval_s=serve.log_interval_s)


def endpoint_of(host: str, port: int) -> str:
    """The address clients call (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def check_binding(endpoint: str, host: str) -> None:
    if needs_token(endpoint) and not os.environ.get(TOKEN_ENV):
        raise ConfigError(f"serve.host {host}: the endpoint would answer beyond this machine without a "
                          f"token; set {TOKEN_ENV} in the environment (clients send it as a bearer token) "
                          "or bind 127.0.0.1")


def run(cfg: Config, model: str | None = None, detach: bool = False) -> None:
    """Deploy the endpoint; then wait for Ctrl-C or SIGTERM and take it down, or with `detach`
    leave it running on the cluster (Serve's applications outlive their driver) and return."""
    if detach and not cfg.ray_address:
        raise ConfigError("serve --detach leaves the endpoint on a cluster: set ray.address (RAY_ADDRESS); "
                          "on this machine, run `lmp serve` in the foreground")
    settings, serve_cfg = settings_of(cfg, model), cfg.serve
    check_binding(settings.endpoint, serve_cfg.host)
    if source.is_registered(settings.source):
        tracking.existing_store_uri(cfg)  # refused here, not by every replica once Ray is up
    # A loaded 2-core machine can take longer than Serve's 5 s to start its proxy.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    init_ray(cfg.ray_address, int(serve_cfg.replicas * serve_cfg.cpus_per_replica + 0.999))
    signals = StopSignals()  # after ray.init, which installs Ray's own
    from ray import serve

    log.info("deploying %s: %d replica(s) at %s", settings.source, serve_cfg.replicas, settings.endpoint)
    try:
        with signals.starting():
            serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port,
                                      "request_timeout_s": serve_cfg.request_timeout_s})
            app = application(settings, serve_cfg.replicas, serve_cfg.cpus_per_replica,
                              serve_cfg.max_queued_requests, worker_env())
            serve.run(app, name=APP_NAME, route_prefix="/")  # returns once every replica is up
    except Stopped:
        if not detach:  # detached, what Serve began is the cluster's to finish
            serve.shutdown()
        raise
    log.info("serving %s at %s (OpenAI API: /v1/models, /v1/completions, "
             "/v1/chat/completions)%s%s", settings.source, settings.endpoint,
             ", bearer token required" if os.environ.get(TOKEN_ENV) else "",
             f" on the cluster at {cfg.ray_address}" if detach else "; Ctrl-C stops")
    if detach:
        return
    signals.requested.wait()
    log.info("stopping the endpoint")
    serve.shutdown()


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM while the endpoint was starting. A KeyboardInterrupt, so that no
    `except Exception` inside Ray swallows it on its way out of start-up."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} while starting")
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM stop the endpoint cleanly, starting or started. Ray's handlers would not:
    its C++ one for SIGTERM aborts the process mid-start-up (exit 134, a stack dump). Installed
    once ray.init has returned: inside it, a signal is still Ray's (exit 15, and its agents outlive
    the process by about a minute). While starting, a signal unwinds start-up (Stopped); once
    started, it ends `requested.wait()`."""

    def __init__(self):
        self.started = False
        self.received: int | None = None
        self.requested = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame) -> None:
        self.received = signum
        self.requested.set()
        if not self.started:
            raise Stopped(signum)

    @contextlib.contextmanager
    def starting(self):
        """Start-up, which a signal stops. Ray's C++ waits (ray.get in serve.start and serve.run)
        poll for signals and raise what the handler raised as a plain KeyboardInterrupt
        (_raylet.check_signals), which would exit 130 for a SIGTERM: it is named again here."""
        try:
            yield
            self.started = True
        except KeyboardInterrupt:
            if self.received is None:
                raise
            raise Stopped(self.received) from None
