"""Claims on a store's conditions, so several processes can fill one store without overlap.

A claim is an exclusive ``flock`` on ``.STORE.claims/<index>.lock`` (beside the store, which
stays a clean zarr hierarchy), held while the condition is
computed and written. The kernel drops the lock when its process dies, so a claim left by a
killed run is taken over at once, without heartbeats or timeouts. The lock file records who
holds it (host, pid, start time) for people looking at a busy store. POSIX file locks work on
local disks and on NFS with lock support; on a file system without them, run one process per
store.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this machine; a zombie (ended, not yet reaped by its
    parent) counts as ended."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class Claims:
    def __init__(self, store: str | Path):
        store = Path(store)
        self.root = store.with_name(f".{store.name}.claims")
        self._held: dict[int, int] = {}  # condition index -> open file descriptor

    def _open(self, index: int) -> int:
        # the folder goes once the store is complete; a late process recreates it (and then
        # finds every condition complete, so nothing is computed twice)
        try:
            self.root.mkdir(exist_ok=True)
            return os.open(self.root / f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only or full folder: one line, not a traceback
            from workbench.store import StoreError

            raise StoreError(f"cannot claim conditions beside the store ({self.root}: {exc.strerror}); a run "
                             "needs a folder it can write to, with free space") from None

    def _acquire(self, index: int, blocking: bool) -> bool:
        fd = self._open(index)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._held[index] = fd
        return True

    def try_claim(self, index: int) -> bool:
        """Claim ``index`` if nobody holds it; never waits."""
        return index in self._held or self._acquire(index, blocking=False)

    def wait_claim(self, index: int) -> None:
        """Claim ``index``, waiting for its holder to finish (or die)."""
        if index not in self._held:
            self._acquire(index, blocking=True)

    def release(self, index: int) -> None:
        fd = self._held.pop(index, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release_all(self) -> None:
        for index in list(self._held):
            self.release(index)

    def remove(self) -> None:
        """Delete the lock files once the store is complete (nobody needs a claim then)."""
        self.release_all()
        for f in self.root.glob("*.lock"):
            f.unlink(missing_ok=True)
        try:
            self.root.rmdir()
        except OSError:
            pass

    def holder(self, index: int) -> dict | None:
        """Who holds ``index`` now (None when free)."""
        fd = self._open(index)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 4096, 0) or b"{}")
            except json.JSONDecodeError:
                return {}
        finally:
            os.close(fd)
