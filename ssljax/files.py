"""Every file ssljax writes in a workdir goes through here, so no kill leaves half a file.

A whole file (config.json, eval/*.json, report files, the feature cache) is written to a
temporary name beside it and renamed over the target: readers see the old file or the new
one, never a mix (a local rename is atomic; on `gs://` the object appears whole when its
upload completes). `metrics.jsonl` grows by appending a line where the filesystem can
append (local disks); on object stores, which cannot, it is rewritten whole, atomically.

JSON written here is strict JSON: a non-finite float becomes the string "NaN", "Infinity"
or "-Infinity" (`float()` in Python and `Number()` in JavaScript read them back);
`read_jsonl` turns them back into floats.

One trainer a workdir: `WorkdirLock` refuses a second one while the first runs.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import sys
import uuid
from typing import Any

from etils.epath import Path

from ssljax.errors import UserError

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _is_local(path: Path) -> bool:
    return "://" not in os.fspath(path)


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file and a rename; creates the parent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        if _is_local(path):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by its string name (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """`json.dumps` that always produces strict JSON (see `finite_json`)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any) -> Path:
    return write_text(path, dumps(value, indent=2) + "\n")


def _decode_row(row: dict) -> dict:
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file. A truncated last line (a write cut off by a kill) is
    dropped with a warning; an unreadable line before it is a UserError."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(_decode_row(json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines):
                print(
                    f"warning: dropped the cut-off last line {number} of {path}: {line[:60]!r}",
                    file=sys.stderr,
                )
                continue
            raise UserError(
                f"line {number} of {path} is not JSON ({line[:60]!r}); delete that line to go on"
            ) from None
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Replace `path` with `rows`, one JSON object a line, atomically."""
    return write_text(path, "".join(dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | Path, row: dict, rows: list[dict]) -> None:
    """Append `row` to `path`; `rows` (every row already in the file, `row` included) is
    what gets written where the filesystem cannot append (gs://)."""
    path = Path(path)
    if not _is_local(path):
        write_jsonl(path, rows)
        return
    with open(path, "a") as f:
        f.write(dumps(row) + "\n")
        f.flush()


class WorkdirLock:
    """Keeps a second trainer off a workdir that one is training.

    An exclusive `flock` on the workdir directory itself, so nothing is written for it:
    taken by process 0 at the start of `train` (before anything else reads or writes the
    workdir) and held until `train` returns. The kernel drops it when the process ends
    in any way, a hard kill included, so a dead run never leaves a stale lock. Local
    workdirs only: object stores (gs://) have no locks, and there a second trainer is not
    detected. On filesystems without `flock` on directories the lock is skipped.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock: None when it is held now or cannot apply (no local directory
        yet, an object store), else a message naming the process that holds it."""
        if self._fd is not None or not _is_local(self.workdir) or not self.workdir.is_dir():
            return None
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return None
        try:
            fd = os.open(self.workdir, os.O_RDONLY)  # not inherited by child processes
        except OSError:  # an unreadable directory: the run's own reads will say so
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # flock unsupported here (some network filesystems)
            return (
                f"--workdir={self.workdir} is being trained by {_lock_holder(self.workdir)}; "
                "wait for it to end, stop it (SIGTERM saves a checkpoint to resume from), "
                "or choose another --workdir"
            )
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _lock_holder(directory: Path) -> str:
    """'process PID (its command line)' for the flock on `directory`, from /proc/locks
    (Linux); 'another process' where that cannot be read."""
    try:
        st = os.stat(directory)
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            pids = [
                fields[4]
                for fields in (line.split() for line in f)
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device
            ]
    except OSError:
        return "another process"
    if not pids:
        return "another process"
    pid = pids[0]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        argv = []
    if not argv:
        return f"process {pid}"
    command = shlex.join(argv)
    if len(command) > 400:
        command = command[:397] + "..."
    return f"process {pid} ({command})"
