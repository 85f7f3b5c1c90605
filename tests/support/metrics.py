"""Scraping a daemon's ``/metrics`` over real HTTP, from a thread (urllib blocks)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: A sample's name and its labels, sorted: ``("p2pshare_requests_total", (("code", "ok"), ...))``.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    """The text a metrics endpoint serves (blocking)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def parse_samples(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str) -> dict[SampleKey, float]:
    """Fetch and parse ``url`` from a thread, the event loop running on meanwhile."""
    return parse_samples(await asyncio.to_thread(fetch_metrics, url))


def sample(samples: dict[SampleKey, float], name: str, **labels: str) -> float:
    """One sample's value (KeyError, naming what there is, if it is absent)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise KeyError(f"no sample {key}; there are {sorted(k for k in samples if k[0] == name)}")
    return samples[key]
