"""Metrics of the daemons (runner/metrics.py) and the ``--metrics HOST:PORT`` flag
(runner/daemon.py): counting, reading on the event loop, and the HTTP endpoint on loopback."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from indexd.__main__ import main as indexd_main
from runner import ExitCode, StartupError, add_daemon_flags
from runner.config import add_config_flag, parse_with_config
from runner.daemon import metrics_address
from runner.metrics import LATENCY_BUCKETS, LoopGauges, MetricsEndpoint, RequestMetrics, is_loopback
from tests.support.metrics import parse_samples, sample, scrape

# --- the flag ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9100", ("::1", 9100)),
    ],
)
def test_the_metrics_flag_gives_host_and_port(text: str, address: tuple[str, int]) -> None:
    parser = argparse.ArgumentParser()
    add_daemon_flags(parser)
    assert parser.parse_args(["--metrics", text]).metrics == address


def test_metrics_are_off_unless_asked_for() -> None:
    parser = argparse.ArgumentParser()
    add_daemon_flags(parser)
    assert parser.parse_args([]).metrics is None


@pytest.mark.parametrize(
    "text", ["9100", "127.0.0.1", ":9100", "127.0.0.1:port", "127.0.0.1:65536", "::1:9100", "h:²"]
)
def test_a_malformed_metrics_address_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        metrics_address(text)


def test_a_bad_metrics_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cert", "c.pem", "--key", "k.pem", "--ca", "ca.pem", "--metrics", "nowhere"]
    assert indexd_main(argv) == ExitCode.USAGE
    assert "--metrics" in capsys.readouterr().err


# --- counting ----------------------------------------------------------------------------


async def test_requests_are_counted_by_operation_and_code_with_their_durations() -> None:
    metrics = RequestMetrics(asyncio.get_running_loop())
    registry = CollectorRegistry()
    registry.register(metrics)
    metrics.request_done("search", "ok", 0.00003)
    metrics.request_done("search", "ok", 0.002)
    metrics.request_done("search", "AUTH_REQUIRED", 0.00001)
    metrics.request_done("auth", "ok", 0.3)
    metrics.bytes_served("fetch", 1000)
    metrics.bytes_served("fetch", 24)
    samples = parse_samples(generate_latest(registry).decode())
    requests = "p2pshare_requests_total"
    assert sample(samples, requests, operation="search", code="ok") == 2
    assert sample(samples, requests, operation="search", code="AUTH_REQUIRED") == 1
    assert sample(samples, requests, operation="auth", code="ok") == 1
    duration = "p2pshare_request_duration_seconds"
    assert sample(samples, f"{duration}_count", operation="search") == 3
    assert sample(samples, f"{duration}_bucket", operation="search", le="0.0001") == 2
    assert sample(samples, f"{duration}_bucket", operation="search", le="0.0025") == 3
    assert sample(samples, f"{duration}_bucket", operation="auth", le="0.25") == 0
    assert sample(samples, f"{duration}_bucket", operation="auth", le="+Inf") == 1
    assert sample(samples, f"{duration}_sum", operation="auth") == pytest.approx(0.3)
    assert sample(samples, "p2pshare_bytes_served_total", operation="fetch") == 1024


async def test_every_latency_bucket_is_exposed_with_prometheus_clients_spelling() -> None:
    metrics = RequestMetrics(asyncio.get_running_loop())
    metrics.request_done("ping", "ok", 100.0)
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = parse_samples(generate_latest(registry).decode())
    bounds = [dict(labels)["le"] for name, labels in samples if name.endswith("_bucket")]
    assert [float(b) for b in bounds] == [*LATENCY_BUCKETS, float("inf")]
    duration = "p2pshare_request_duration_seconds_bucket"
    assert sample(samples, duration, operation="ping", le="60.0") == 0
    assert sample(samples, duration, operation="ping", le="+Inf") == 1


async def test_a_scrape_from_another_thread_reads_the_gauges_on_the_event_loop() -> None:
    readers: list[threading.Thread] = []

    def read() -> dict[str, float]:
        readers.append(threading.current_thread())
        return {"p2pshare_test_things": 7}

    registry = CollectorRegistry()
    registry.register(LoopGauges(asyncio.get_running_loop(), read, {"p2pshare_test_things": "t"}))
    text = await asyncio.to_thread(generate_latest, registry)
    assert sample(parse_samples(text.decode()), "p2pshare_test_things") == 7
    assert readers == [threading.main_thread()]  # the loop's thread, not the scraper's


def test_gauges_are_left_out_when_the_event_loop_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()  # never run: nobody answers
    try:
        registry = CollectorRegistry()
        gauges = LoopGauges(
            loop, lambda: {"p2pshare_test_things": 1}, {"p2pshare_test_things": "t"}
        )
        gauges.timeout = 0.01
        registry.register(gauges)
        with caplog.at_level(logging.WARNING, logger="runner.metrics"):
            samples = parse_samples(generate_latest(registry).decode())
    finally:
        loop.close()
    assert ("p2pshare_test_things", ()) not in samples
    assert "did not answer" in caplog.text


class Ticks:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting_gauges(
    loop: asyncio.AbstractEventLoop, reads: list[float]
) -> tuple[CollectorRegistry, LoopGauges, Ticks]:
    """Gauges whose ``p2pshare_test_reads`` is how many times they were read (each read is
    noted in ``reads``, with the time), on a clock of the test's."""
    ticks = Ticks()

    def read() -> dict[str, float]:
        reads.append(ticks.now)
        return {"p2pshare_test_reads": len(reads)}

    gauges = LoopGauges(loop, read, {"p2pshare_test_reads": "t"})
    gauges.clock = ticks
    registry = CollectorRegistry()
    registry.register(gauges)
    return registry, gauges, ticks


async def test_two_scrapes_within_a_second_read_the_gauges_once() -> None:
    reads: list[float] = []
    registry, _, ticks = counting_gauges(asyncio.get_running_loop(), reads)
    first = parse_samples((await asyncio.to_thread(generate_latest, registry)).decode())
    ticks.now += 0.999
    second = parse_samples((await asyncio.to_thread(generate_latest, registry)).decode())
    assert reads == [100.0]
    assert sample(first, "p2pshare_test_reads") == sample(second, "p2pshare_test_reads") == 1


async def test_a_scrape_a_second_after_the_last_read_reads_the_gauges_again() -> None:
    reads: list[float] = []
    registry, _, ticks = counting_gauges(asyncio.get_running_loop(), reads)
    generate_latest(registry)
    ticks.now += 1.0
    samples = parse_samples(generate_latest(registry).decode())
    assert reads == [100.0, 101.0]
    assert sample(samples, "p2pshare_test_reads") == 2


def test_a_scrape_the_event_loop_does_not_answer_serves_the_last_values_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        reads: list[float] = []
        registry, gauges, ticks = counting_gauges(loop, reads)

        async def on_the_loop() -> bytes:
            return generate_latest(registry)

        # the first scrape runs on the loop (read at once); the next comes from outside it
        # while the loop runs nothing: the loop does not answer
        loop.run_until_complete(on_the_loop())
        gauges.timeout = 0.01
        ticks.now += 5
        with caplog.at_level(logging.WARNING, logger="runner.metrics"):
            samples = parse_samples(generate_latest(registry).decode())
    finally:
        loop.close()
    assert reads == [100.0]
    assert sample(samples, "p2pshare_test_reads") == 1
    assert "did not answer" in caplog.text and "the last values served" in caplog.text


async def test_a_scrape_holds_the_gauge_lock_while_the_loop_reads_the_gauges() -> None:
    held: list[bool] = []

    def read() -> dict[str, float]:
        held.append(gauges.lock.locked())  # another scrape would wait for it
        return {}

    gauges = LoopGauges(asyncio.get_running_loop(), read, {})
    await asyncio.to_thread(lambda: list(gauges.collect()))
    assert held == [True]


# --- the endpoint ------------------------------------------------------------------------


async def test_the_endpoint_on_port_0_serves_metrics_and_says_where(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = MetricsEndpoint(asyncio.get_running_loop())
    endpoint.requests.request_done("search", "ok", 0.0001)
    with caplog.at_level(logging.INFO, logger="runner.metrics"):
        endpoint.start("127.0.0.1", 0)
    try:
        assert endpoint.port > 0
        assert f"metrics on http://127.0.0.1:{endpoint.port}/metrics" in caplog.text
        assert "not a loopback address" not in caplog.text
        samples = await scrape(endpoint.url)
        assert sample(samples, "p2pshare_requests_total", operation="search", code="ok") == 1
    finally:
        await asyncio.to_thread(endpoint.close)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5).close()


async def test_a_metrics_port_in_use_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = MetricsEndpoint(asyncio.get_running_loop())
        with pytest.raises(StartupError, match=re.escape("cannot serve metrics on 127.0.0.1:")):
            endpoint.start("127.0.0.1", taken.getsockname()[1])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.2", True), ("::1", True), ("LocalHost", True),
     ("0.0.0.0", False), ("::", False), ("198.18.0.1", False), ("metrics.example", False)],
)  # fmt: skip
def test_only_loopback_addresses_pass_without_a_warning(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_metrics_address_may_come_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "indexd.toml"
    config.write_text('metrics = "[::1]:9100"\n', encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_daemon_flags(parser)
    add_config_flag(parser, "indexd")
    args = parse_with_config(parser, ["--config", str(config)], "indexd")
    assert args.metrics == ("::1", 9100)
