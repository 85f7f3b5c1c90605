"""SqliteIndexStore's enrollment records (schema version 3): issued certificates, the names
they give their users, revocations and disabled users (PROTOCOL.md §10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from indexd.store import (
    IssuedCertificate,
    Listing,
    PeerOwned,
    SqliteIndexStore,
    UnknownUser,
    UserDisabled,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteIndexStore]:
    """A store with users alice and bob."""
    store = SqliteIndexStore(tmp_path / "index.db")
    store.add_user("alice", b"hash-a", 1.0)
    store.add_user("bob", b"hash-b", 1.0)
    try:
        yield store
    finally:
        store.close()


def _cert(
    serial: str, user: str = "alice", name: str = "laptop", until: float = 100.0
) -> IssuedCertificate:
    return IssuedCertificate(serial, user, name, 1.0, until)


def test_an_issued_certificate_makes_its_name_the_user_s(store: SqliteIndexStore) -> None:
    store.record_certificate(_cert("a1"))
    store.record_certificate(_cert("a2"))  # the owner renews
    assert store.enrolled_names() == {"laptop": "alice"}
    assert [c.serial for c in store.certificates()] == ["a1", "a2"]
    with pytest.raises(PeerOwned):
        store.record_certificate(_cert("b1", "bob"))


def test_a_name_synced_by_another_user_is_not_issued(store: SqliteIndexStore) -> None:
    store.replace_listing(Listing("bob", "desk", 7001, "10.0.0.1", (), 1.0))
    with pytest.raises(PeerOwned):
        store.record_certificate(_cert("a1", name="desk"))
    with pytest.raises(UnknownUser):
        store.record_certificate(_cert("c1", "carol"))


def test_revocations_by_serial_user_and_domain_until_expiry(store: SqliteIndexStore) -> None:
    store.record_certificate(_cert("a1"))
    store.record_certificate(_cert("a2", name="phone", until=50.0))
    store.record_certificate(_cert("b1", "bob", "desk"))
    assert store.revocations(0.0) == (frozenset(), frozenset())
    assert store.revoke_certificates(10.0, serial="a1") == 1
    assert store.revoke_certificates(10.0, serial="a1") == 0  # already revoked
    assert store.revoke_certificates(10.0, domain_name="desk") == 1
    assert store.revoke_certificates(10.0, username="alice") == 1
    assert store.revocations(10.0)[1] == {"a1", "a2", "b1"}
    assert store.revocations(60.0)[1] == {"a1", "b1"}  # a2 has expired: no need to list it
    with pytest.raises(ValueError, match="revoke what"):
        store.revoke_certificates(10.0)


def test_a_disabled_user_has_no_password_and_gets_no_certificate(
    store: SqliteIndexStore,
) -> None:
    assert store.set_user_disabled("alice", True)
    assert not store.set_user_disabled("carol", True)
    assert store.password_hash("alice") is None
    assert store.revocations(0.0)[0] == {"alice"}
    with pytest.raises(UserDisabled):
        store.record_certificate(_cert("a1"))
    assert store.set_user_disabled("alice", False)
    assert store.password_hash("alice") == b"hash-a"
