"""Output locations checked before any work: a run must not measure for an hour, then fail to write its report.

Each check tries what the run will do (create a file where the output goes) instead of guessing from
permission bits, which root, ACLs and read-only mounts make unreliable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mechtest.errors import MechtestError


def writable_problem(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (or in the folder it would be created in), or None."""
    d = Path(directory).absolute()
    while not d.exists() and d.parent != d:
        d = d.parent  # the run creates the missing folders: they must be creatable here
    if not d.is_dir():
        return f"{d} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".mechtest-probe-", dir=d)
    except OSError as e:
        return f"{d} is not writable ({e.strerror or e})"
    os.close(fd)
    os.unlink(name)
    return None


def check_report_dir(path: Path) -> None:
    """``--mechtest-report DIR``: a folder (created if missing) that can be written."""
    if path.exists() and not path.is_dir():
        raise MechtestError(f"--mechtest-report {path}: is a file; give a folder for the heat maps (created if "
                            "missing)")
    if problem := writable_problem(path):
        raise MechtestError(f"--mechtest-report {path}: {problem}")


def check_snapshot_dirs(directories) -> None:
    """``--snapshot-update``: every snapshot folder it will write into can be written."""
    for directory in sorted(set(directories)):
        if problem := writable_problem(directory):
            raise MechtestError(f"--snapshot-update cannot write snapshots into {directory}: {problem}")
