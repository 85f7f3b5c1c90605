"""Host tests: a test bed of network namespaces per test, a PKI with no loopback address, the
daemons started as a user starts them, and a check at the end that the beds left nothing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.hosts.deployment import NAMES, Deployment, HostPKI, certs, finished
from tests.support.hosts import (
    Backend,
    TestBed,
    TestBedUnavailable,
    leftovers,
    probe_backend,
    unavailable_means_failure,
)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """At the end of the session: no namespace, link or process of any test bed remains."""
    yield
    left = leftovers()
    assert not left, f"the test beds left behind: {left}"


@pytest.fixture(scope="session")
def backend() -> Backend:
    """How this machine makes test beds; without a way, skip (or fail, under CI=true)."""
    try:
        return probe_backend()
    except TestBedUnavailable as exc:
        if unavailable_means_failure(os.environ):
            pytest.fail(f"CI=true, so the host tests must run: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def testbed(backend: Backend, request: pytest.FixtureRequest) -> Callable[..., TestBed]:
    """Open test beds (``testbed(["index", "peer1"], rates={...})``), closed after the test."""

    def make(hosts: Sequence[str], *, rates: dict[str, float] | None = None) -> TestBed:
        bed = TestBed(hosts, rates=rates, backend=backend)
        request.addfinalizer(bed.close)
        bed.open()
        return bed

    return make


@pytest.fixture(scope="session")
def host_pki(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> HostPKI:
    """The session's PKI, made with ``python -m certs`` and ``--no-loopback``."""
    directory = tmp_path_factory.mktemp("host-pki")
    finished(certs("ca", "--dir", str(directory)))
    issuing = [certs("issue", name, "--dir", str(directory), "--no-loopback") for name in NAMES]
    for proc in issuing:
        finished(proc)
    return HostPKI(directory)


@pytest.fixture
def deploy(
    testbed: Callable[..., TestBed], host_pki: HostPKI, tmp_path: Path
) -> Callable[..., Deployment]:
    """A deployment on a fresh test bed: ``deploy(["index", "peer1", ...], rates={...})``."""

    def make(hosts: Sequence[str], *, rates: dict[str, float] | None = None) -> Deployment:
        return Deployment(testbed(hosts, rates=rates), host_pki, tmp_path)

    return make
