"""An operator's view of a daemon: Prometheus metrics on ``--metrics HOST:PORT``.

Each daemon has a registry of its own (several daemons may run in one process), served by
prometheus-client's HTTP server in a thread of its own. What is counted on the event loop (the
requests, through :class:`netproto.service.RequestObserver`) is kept in prometheus-client's
locked values; what is read at scrape time (connections, the index's peers and files) is read
on the event loop, which owns it, the index's gauges at most once a second. Labels are
operation names of a handler table and error codes only: never a user, token, file name or
address. README.md, "Operating", lists every metric.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from netproto.server import Server
from runner.command import StartupError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Request durations: an inline ``search`` takes tens of µs, a login's bcrypt tens of ms, a
#: fetch of a large file seconds to minutes.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: How long a scrape waits for the event loop to read what it owns.
SCRAPE_TIMEOUT = 2.0
#: Seconds a scrape's gauges are served again before they are read anew: what they count may
#: take a walk over every peer on the event loop, which scrapers do not get to repeat at will.
GAUGE_MAX_AGE = 1.0


class _OperationStats:
    """What one operation's requests came to: counts by outcome, duration buckets, sum."""

    __slots__ = ("buckets", "codes", "seconds")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.seconds = 0.0


class RequestMetrics(Collector):
    """Requests by operation and outcome, their durations, and streamed bytes: the
    :class:`~netproto.service.RequestObserver` of a daemon's server, and their collector.

    Counted in plain dicts and lists on the event loop: a prometheus-client ``Counter`` and
    ``Histogram`` take four locks a request, more than an inline ``search`` itself costs
    (README.md, "Operating"). A scrape copies them on the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.loop = loop
        self.timeout = timeout
        #: Now, in seconds (monotonic): the clock requests are timed on.
        self.clock: Callable[[], float] = time.perf_counter
        self._operations: dict[str, _OperationStats] = {}
        self._served: dict[str, int] = {}

    def request_done(self, operation: str, code: str, seconds: float) -> None:
        """Count a request and its duration."""
        stats = self._operations.get(operation)
        if stats is None:
            stats = self._operations[operation] = _OperationStats()
        codes = stats.codes
        codes[code] = codes.get(code, 0) + 1
        stats.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.seconds += seconds

    def bytes_served(self, operation: str, count: int) -> None:
        """Count a streamed chunk's payload bytes."""
        self._served[operation] = self._served.get(operation, 0) + count

    def describe(self) -> Iterable[Metric]:
        """The metric families, without values (for the registry's name check)."""
        return self._families({}, {})

    def collect(self) -> Iterable[Metric]:
        """The counts so far, copied on the event loop."""
        try:
            operations, served = read_on_loop(self.loop, self._snapshot, self.timeout)
        except (RuntimeError, TimeoutError) as exc:
            log.warning("metrics: the event loop did not answer (%s); requests left out", exc)
            return []
        return self._families(operations, served)

    def _snapshot(
        self,
    ) -> tuple[dict[str, tuple[dict[str, int], list[int], float]], dict[str, int]]:
        operations = {
            name: (dict(s.codes), list(s.buckets), s.seconds)
            for name, s in self._operations.items()
        }
        return operations, dict(self._served)

    @staticmethod
    def _families(
        operations: Mapping[str, tuple[dict[str, int], list[int], float]],
        served: Mapping[str, int],
    ) -> list[Metric]:
        requests = CounterMetricFamily(
            "p2pshare_requests",
            "Requests answered, by operation and outcome (ok, or the error code)",
            labels=["operation", "code"],
        )
        duration = HistogramMetricFamily(
            "p2pshare_request_duration_seconds",
            "Seconds from a request's parsing to its answer (a stream's last chunk)",
            labels=["operation"],
        )
        streamed = CounterMetricFamily(
            "p2pshare_bytes_served",
            "Payload bytes of streamed answers (fetch, fetch_range) sent to requesters",
            labels=["operation"],
        )
        bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # as prometheus-client writes them
        for name, (codes, buckets, seconds) in sorted(operations.items()):
            for code, count in sorted(codes.items()):
                requests.add_metric([name, code], count)
            duration.add_metric(
                [name], list(zip(bounds, itertools.accumulate(buckets), strict=True)), seconds
            )
        for name, count in sorted(served.items()):
            streamed.add_metric([name], count)
        return [requests, duration, streamed]


class ConnectionCollector(Collector):
    """Connections open and accepted by a server, read from its admission at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def describe(self) -> Iterable[Metric]:
        """The metric families, without values (for the registry's name check)."""
        return self._families(None, None)

    def collect(self) -> Iterable[Metric]:
        """The current values (plain reads of counters the event loop keeps)."""
        server = self.server
        return self._families(server.connection_count, server.admission.accepted)

    @staticmethod
    def _families(open_: int | None, accepted: int | None) -> list[Metric]:
        return [
            GaugeMetricFamily(
                "p2pshare_connections_open",
                "Connections open now (TLS or still handshaking)",
                value=open_,
            ),
            CounterMetricFamily(
                "p2pshare_connections_accepted",
                "TCP connections accepted, served or refused by the connection caps",
                value=accepted,
            ),
        ]


class LoopGauges(Collector):
    """Gauges computed at scrape time on the event loop, whose thread owns what they count.

    ``read`` returns a value for each name of ``help`` (name → help text). It runs at most
    once every ``max_age`` seconds, one scrape at a time: scrapes meanwhile get the values
    read last, so however many scrapers there are, the loop walks what it counts at most
    once a second. When the loop does not answer within ``timeout`` (stopping, or stuck), the
    scrape serves the values read last, if any, and the next scrape waits ``max_age`` before
    it asks again.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read: Callable[[], Mapping[str, float]],
        help: Mapping[str, str],
        timeout: float = SCRAPE_TIMEOUT,
        max_age: float = GAUGE_MAX_AGE,
    ) -> None:
        self.loop = loop
        self.read = read
        self.help = dict(help)
        self.timeout = timeout
        self.max_age = max_age
        #: Now, in seconds (monotonic): when values were read.
        self.clock: Callable[[], float] = time.monotonic
        #: Held by the scrape reading the gauges (scrapes come in threads of the HTTP server).
        self.lock = threading.Lock()
        self._values: Mapping[str, float] | None = None
        self._read_at: float | None = None

    def describe(self) -> Iterable[Metric]:
        """The metric families, without values (for the registry's name check)."""
        return [GaugeMetricFamily(name, text) for name, text in self.help.items()]

    def collect(self) -> Iterable[Metric]:
        """The gauges: the values read last if under ``max_age`` old, else read on the loop
        now; none if the loop does not answer and nothing was read before."""
        with self.lock:
            values = self._current()
        if values is None:
            return []
        return [
            GaugeMetricFamily(name, text, value=values[name]) for name, text in self.help.items()
        ]

    def _current(self) -> Mapping[str, float] | None:
        """The values to serve (hold the lock)."""
        if self._read_at is not None and self.clock() - self._read_at < self.max_age:
            return self._values
        try:
            self._values = read_on_loop(self.loop, self.read, self.timeout)
        except (RuntimeError, TimeoutError) as exc:  # the loop is closed, or did not answer
            kept = "the last values served" if self._values is not None else "gauges left out"
            log.warning("metrics: the event loop did not answer (%s); %s", exc, kept)
        # a loop that did not answer is not asked again at once either
        self._read_at = self.clock()
        return self._values


def read_on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T], timeout: float) -> T:
    """``read()`` run on ``loop`` (from another thread: a scrape), its result or exception;
    :class:`TimeoutError` if the loop does not run it within ``timeout``, RuntimeError if the
    loop is closed."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # scraped from the loop itself (a test): read at once
        return read()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(read())
            except Exception as exc:
                future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


def is_loopback(host: str) -> bool:
    """True if ``host`` names a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsEndpoint:
    """A daemon's registry, what feeds it, and its HTTP endpoint (``/metrics``).

    :meth:`watch` the server (before it starts, to count every request), :meth:`add` the
    daemon's own collectors, :meth:`start`; :meth:`close` when the daemon stops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(loop)
        self.registry.register(self.requests)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host = ""
        #: The bound port (the real one after port 0); 0 until started.
        self.port = 0

    def watch(self, server: Server) -> None:
        """Count ``server``'s requests and connections."""
        server.dispatch.observe(self.requests)
        self.registry.register(ConnectionCollector(server))

    def add(self, collector: Collector) -> None:
        """Serve ``collector``'s metrics too."""
        self.registry.register(collector)

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` in a thread; :class:`StartupError` if it cannot."""
        try:
            self._http, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.host, self.port = host, int(self._http.server_address[1])
        if not is_loopback(host):
            # Counts only (no names, tokens or addresses), but still: who may read them.
            log.warning(
                "metrics served on %s, not a loopback address: anyone who can reach it", host
            )
        log.info("metrics on %s", self.url)

    def close(self) -> None:
        """Stop the HTTP endpoint (blocks up to half a second: call it off the event loop)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


__all__ = [
    "GAUGE_MAX_AGE",
    "LATENCY_BUCKETS",
    "ConnectionCollector",
    "LoopGauges",
    "MetricsEndpoint",
    "RequestMetrics",
    "is_loopback",
    "read_on_loop",
]
