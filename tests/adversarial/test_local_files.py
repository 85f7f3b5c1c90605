"""Local files (issue 12, item 10): a key others may read, a share or keyword folder others
may write or own, and a partial file planted by someone else are refused with one readable
line — ``python -m peerd`` does not start, a download is not made — and, with the user's own
files, the same peer starts, serves and downloads."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from peerd.client import PeerClient
from peerd.daemon import PeerDaemon
from peerd.download import download, part_names
from peerd.errors import UnsafeLocalFile
from peerd.install import FINAL_MODE
from tests.support.adversary import (
    HEALTH_CONTENT,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    PASSWORD,
    REPO,
    STEP,
    Live,
    assert_peer_serves,
    live_daemons,
    peer_config,
    peerd_process,
    put,
    tree,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
NOBODY = 65534


async def run_peerd(pki: Any, index_port: int, share: Path, key: Path) -> tuple[int, str]:
    """``python -m peerd`` as peer3 with ``key``: its exit status and stderr (it must stop)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "P2P_PASSWORD": PASSWORD}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peerd",
        "-hostname", "peer3", "-index_server_name", f"{HOST}:{index_port}",
        "-peer_server_port", "0", "-username", "peer3", "-file_directory", str(share),
        "-certificate", str(pki.cert("peer3")), "-private_key", str(key), "--ca", str(pki.ca),
        "--bind", HOST, "--register", "--no-shell",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), STEP)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def own_key(pki: Any, tmp_path: Path, mode: int) -> Path:
    """A copy of peer3's key with ``mode`` (the session's PKI is left as it is)."""
    key = tmp_path / "keys" / "peer3.key"
    key.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(pki.key("peer3"), key)
    key.chmod(mode)
    return key


def one_line_failure(status: int, err: str) -> str:
    assert status == 1, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_peerd_refuses_a_key_others_may_read(pki: Any, tmp_path: Path, mode: int) -> None:
    async with live_daemons(pki, tmp_path / "rig") as live:
        status, err = await run_peerd(
            pki, live.index_port, tmp_path / "share", own_key(pki, tmp_path, mode)
        )
        line = one_line_failure(status, err)
        assert line.startswith("peerd: private key ") and f"mode {mode:04o}" in line
        assert "chmod 600" in line
        async with peerd_process(pki, "peer3", live.index_port, tmp_path / "share") as ok:
            assert ok.port > 0  # the same peer with its key at 0600 starts and serves
        await assert_peer_serves(live)


@needs_root
async def test_peerd_refuses_a_key_of_another_user(pki: Any, tmp_path: Path) -> None:
    key = own_key(pki, tmp_path, 0o600)
    os.chown(key, NOBODY, NOBODY)
    async with live_daemons(pki, tmp_path / "rig") as live:
        status, err = await run_peerd(pki, live.index_port, tmp_path / "share", key)
        assert f"belongs to uid {NOBODY}" in one_line_failure(status, err)


@pytest.mark.parametrize("folder", ["share", "share/koala"])
async def test_peerd_refuses_a_share_others_may_write(
    pki: Any, tmp_path: Path, folder: str
) -> None:
    share = tmp_path / "share"
    put(share, "koala/joey.txt", b"a baby koala\n")
    (tmp_path / folder).chmod(0o777)
    async with live_daemons(pki, tmp_path / "rig") as live:
        key = own_key(pki, tmp_path, 0o600)
        status, err = await run_peerd(pki, live.index_port, share, key)
        line = one_line_failure(status, err)
        assert f"{tmp_path / folder} may be written by other users (mode 0777)" in line
        (tmp_path / folder).chmod(0o755)
        async with peerd_process(pki, "peer3", live.index_port, share) as ok:
            assert ok.port > 0
        await assert_peer_serves(live)


async def _downloader(live: Live, pki: Any, share: Path) -> PeerDaemon:
    daemon = PeerDaemon(peer_config(pki, "peer2", live.index_port, share))
    await asyncio.wait_for(daemon.start(), STEP)
    return daemon


async def _fetch(live: Live, pki: Any, share: Path) -> Path:
    token = live.peer_token("peer2")
    peer = await PeerClient.connect(
        HOST, live.peer_port, "peer1", pki.client_ctx("peer2"),
        token=token, requester="peer2", connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip
    try:
        return (await download(peer, HEALTH_KEYWORD, HEALTH_FILE, share)).path
    finally:
        await peer.close()


@needs_root
async def test_a_download_into_a_keyword_folder_of_another_user_is_refused(
    pki: Any, tmp_path: Path
) -> None:
    share = tmp_path / "peer2-files"
    theirs = share / HEALTH_KEYWORD
    theirs.mkdir(parents=True)
    async with live_daemons(pki, tmp_path / "rig") as live:
        downloader = await _downloader(live, pki, share)
        try:
            os.chown(theirs, NOBODY, NOBODY)  # someone else's folder appears in the share
            with pytest.raises(UnsafeLocalFile, match=f"belongs to uid {NOBODY}"):
                await _fetch(live, pki, share)
            assert list(theirs.iterdir()) == []  # nothing written into it
            os.chown(theirs, os.geteuid(), os.getegid())
            path = await _fetch(live, pki, share)
        finally:
            await asyncio.wait_for(downloader.stop(grace=0.5), STEP)
        assert path.read_bytes() == HEALTH_CONTENT
        st = path.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == FINAL_MODE


async def test_a_partial_file_others_may_write_is_refused_and_left_alone(
    pki: Any, tmp_path: Path
) -> None:
    share = tmp_path / "peer2-files"
    planted = put(share, f"{HEALTH_KEYWORD}/{part_names(HEALTH_FILE)[0]}", b"planted bytes")
    planted.chmod(0o666)
    async with live_daemons(pki, tmp_path / "rig") as live:
        before = tree(share)
        with pytest.raises(UnsafeLocalFile, match="may be written by other users"):
            await _fetch(live, pki, share)
        assert tree(share) == before  # neither used nor removed: the user decides
        planted.unlink()
        path = await _fetch(live, pki, share)
        assert path.read_bytes() == HEALTH_CONTENT
        assert stat.S_IMODE(path.stat().st_mode) == FINAL_MODE
