"""The sync entries of a share with their manifest digests and publisher signatures.

Each entry a peer syncs carries its file's manifest digest and the publisher's signature over
(publisher, keyword, file name, size, SHA-256, manifest digest) (PROTOCOL.md §4.8), so a search
hit holds what the index cannot forge. Manifests come from the peer's own cache
(:class:`peerd.manifests.ManifestCache`, by size, mtime and inode), the one ``manifest``
answers from; a file that cannot have one (too large, changed or gone since the scan) is synced
without it, as before, and is still served by the whole-file ``fetch``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from netproto.errors import P2PError
from netproto.operations import SharedFile
from peerd.manifests import ManifestCache
from peerd.share import OpenFile, Share

log = logging.getLogger(__name__)


def published(
    share: Share, manifests: ManifestCache, files: Iterable[SharedFile]
) -> list[SharedFile]:
    """``files`` with the manifest digest and signature of each that has one (blocking)."""
    files = list(files)
    # Room for every file: an unchanged file is then never hashed again for the next scan.
    manifests.fit(len(files))
    out: list[SharedFile] = []
    for f in files:
        try:
            opened = share.open_file(f.keyword, f.filename)
        except (P2PError, OSError):
            out.append(f)
            continue
        try:
            folder = opened.keyword_dir if isinstance(opened, OpenFile) else f.keyword
            signed = manifests.signed(folder, f.filename, opened)
        except (P2PError, OSError) as exc:
            log.debug("no manifest for %s/%s: %s", f.keyword, f.filename, exc)
            out.append(f)
            continue
        finally:
            opened.close()
        m = signed.manifest
        if (m.size, m.sha256, signed.keyword) != (f.size, f.sha256, f.keyword):
            out.append(f)  # changed since the scan: the next sync has both anew
            continue
        out.append(dataclasses.replace(f, manifest=signed.digest, signature=signed.signature))
    return out


__all__ = ["published"]
