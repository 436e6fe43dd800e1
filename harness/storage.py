"""A run folder's storage failing under a run: disk full, quota, read-only.

Such a fault is not a cell's result. The runner ends the run cleanly instead (one message,
exit 1, run.json saying why where it can still be written), and the cell in flight is
left without a record, so `--resume` runs it again once there is room.

Two parts:
- `storage_errors(what)` turns an OSError of a write the runner makes itself into a
  StorageFault that names the errno and the file;
- `storage_problem(folder)` is asked before a failure is recorded: a worker that died, or
  reported an exception, because ITS write (events, timeline) hit the full disk must not
  leave a failed record that `--resume` would never retry.

A ballast file (RUN_DIR/.harness.ballast) holds room for one more run.json while the run
goes on: on a full disk it is deleted first, so the final status can still be written.
"""
from __future__ import annotations

from contextlib import contextmanager
import errno
import os
from pathlib import Path

BALLAST_NAME = ".harness.ballast"
#: a run folder with less room than this is full for the harness: a cell's record and
#: timeline need more than that, and a write of them failing half-way helps nobody
MIN_FREE_BYTES = 1 << 20
PROBE_BYTES = 64 << 10

#: errnos that say the folder cannot take writes, not that a cell went wrong
STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large",
}


class StorageFault(Exception):
    """The run folder stopped taking writes; str() is the reason, for run.json and the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def describe(e: OSError) -> str:
    """'disk full (ENOSPC)' for an OSError."""
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return f"{STORAGE_ERRNOS.get(e.errno, e.strerror or 'I/O error')} ({name})"


def is_storage_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in STORAGE_ERRNOS


@contextmanager
def storage_errors(what: str):
    """Within: an OSError of a storage kind becomes StorageFault('<kind> (<ERRNO>) writing <what>')."""
    try:
        yield
    except OSError as e:
        if is_storage_error(e):
            raise StorageFault(f"{describe(e)} writing {what}") from None
        raise


def storage_problem(folder: Path) -> str | None:
    """Why `folder` cannot take a cell's files now, or None when it can. Statvfs first
    (read-only mount, free space as an unprivileged writer sees it), then a real write
    of PROBE_BYTES (quotas and permissions statvfs does not show)."""
    try:
        st = os.statvfs(folder)
    except OSError as e:
        return f"{describe(e)} reading the run folder"
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system (EROFS)"
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        return f"disk full (ENOSPC): {free} bytes free in the run folder"
    probe = Path(folder) / f".harness.probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return f"{describe(e)} writing to the run folder" if is_storage_error(e) else None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def reserve(run_dir: Path, size: int) -> None:
    """Hold `size` bytes for the last run.json write (allocated, not a sparse file)."""
    path = run_dir / BALLAST_NAME
    with storage_errors(f"{path.name} (room kept for run.json)"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            if os.fstat(fd).st_size < size:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.pwrite(fd, b"\0" * size, 0)  # a filesystem without fallocate
        except BaseException:
            os.close(fd)
            release(run_dir)  # a half-made ballast would only take room
            raise
        os.close(fd)


def release(run_dir: Path) -> None:
    try:
        (run_dir / BALLAST_NAME).unlink()
    except OSError:
        pass  # gone already, or a read-only folder: nothing to give back
