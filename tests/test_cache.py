"""The activation cache must never serve wrong data: bad files are recomputed, racing workers compute once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechtest
from mechtest.cache import ActivationCache
from mechtest.errors import CacheError, MechtestError

REPO = Path(__file__).resolve().parents[1]

BASE = dict(
    fingerprint="model-abc",
    inputs=torch.tensor([[5, 17, 42, 9]]),
    site="head_out",
    positions=None,
    dtype=torch.float32,
    extra={"layer": 3},
)


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert raw(a[name]) == raw(b[name]), name


def must_not_compute():
    raise AssertionError("compute() called on a cache hit")


class Counter:
    """compute() that records its calls and returns fixed tensors."""

    def __init__(self, tensors: dict):
        self.tensors = tensors
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.tensors


def all_dtypes() -> dict:
    x = torch.tensor([1.5, -0.0, float("nan"), float("inf"), -3.25e-5, 7.0])
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(5, 3)
    return {
        "f32": x,
        "f64": x.double() / 3,
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "f8": x.to(torch.float8_e4m3fn),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "i16": torch.tensor([-32768, 1, 32767], dtype=torch.int16),
        "i32": torch.tensor([-(2**31), 3, 2**31 - 1], dtype=torch.int32),
        "i64": torch.tensor([-(2**63), 4, 2**63 - 1], dtype=torch.int64),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "transposed": base.t(),  # non-contiguous
        "strided": base[:, ::2],  # non-contiguous view
        "shared_full": shared,  # these two share one storage
        "shared_row": shared[1],
    }


# ---------------------------------------------------------------- round trip


def test_hit_returns_bit_identical_tensors_without_computing(tmp_path):
    tensors = all_dtypes()
    expected = {k: v.clone() for k, v in tensors.items()}
    compute = Counter(tensors)
    cache = ActivationCache(tmp_path)
    key = cache.key(**BASE)

    first = cache.get_or_compute(key, compute)
    assert compute.calls == 1
    assert_bit_identical(first, expected)
    assert all(t.is_contiguous() for t in first.values())

    second = cache.get_or_compute(key, must_not_compute)
    assert_bit_identical(second, expected)
    assert all(t.device.type == "cpu" for t in second.values())
    assert (cache.stats.hits, cache.stats.misses, cache.stats.computed) == (1, 1, 1)

    other = ActivationCache(tmp_path)  # a fresh instance (another worker) reads the same file
    assert_bit_identical(other.get_or_compute(key, must_not_compute), expected)
    assert other.stats.hits == 1 and other.stats.computed == 0

    path = cache.path_for(key)
    assert path == tmp_path / key[:2] / f"{key}.safetensors" and path.is_file()


def test_file_metadata_records_key_version_and_checksum(tmp_path):
    from safetensors import safe_open

    cache = ActivationCache(tmp_path)
    key = cache.key(**BASE)
    cache.get_or_compute(key, lambda: {"x": torch.ones(3)})
    with safe_open(str(cache.path_for(key)), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["key"] == key
    assert meta["mechtest_version"] == mechtest.__version__
    assert len(meta["sha256"]) == 64


# ----------------------------------------------------------------------- keys


def _variants(monkeypatch) -> dict[str, str]:
    changed_token = BASE["inputs"].clone()
    changed_token[0, 2] = 43
    keys = {
        "base": ActivationCache.key(**BASE),
        "fingerprint": ActivationCache.key(**{**BASE, "fingerprint": "model-abd"}),
        "one_token": ActivationCache.key(**{**BASE, "inputs": changed_token}),
        "shape": ActivationCache.key(**{**BASE, "inputs": BASE["inputs"].reshape(2, 2)}),
        "extra_token": ActivationCache.key(**{**BASE, "inputs": torch.tensor([[5, 17, 42, 9, 0]])}),
        "site": ActivationCache.key(**{**BASE, "site": "resid_pre"}),
        "positions_list": ActivationCache.key(**{**BASE, "positions": [0, 1]}),
        "positions_other": ActivationCache.key(**{**BASE, "positions": [0, 2]}),
        "positions_empty": ActivationCache.key(**{**BASE, "positions": []}),
        "dtype": ActivationCache.key(**{**BASE, "dtype": torch.float16}),
        "dtype_bf16": ActivationCache.key(**{**BASE, "dtype": "bfloat16"}),
        "extra_value": ActivationCache.key(**{**BASE, "extra": {"layer": 4}}),
        "extra_none": ActivationCache.key(**{**BASE, "extra": None}),
    }
    monkeypatch.setattr(mechtest.cache, "__version__", "999.0.0")
    keys["version"] = ActivationCache.key(**BASE)
    monkeypatch.undo()
    return keys


def test_key_changes_with_every_ingredient(monkeypatch):
    keys = _variants(monkeypatch)
    assert len(set(keys.values())) == len(keys), keys
    for key in keys.values():
        assert len(key) == 64 and int(key, 16) >= 0


def test_key_is_stable_for_equal_inputs():
    base = ActivationCache.key(**BASE)
    same = ActivationCache.key(
        fingerprint="model-abc",
        inputs=torch.tensor([[5, 17, 42, 9]], dtype=torch.int32),  # same ids, other integer width
        site="head_out",
        positions=None,
        dtype="float32",
        extra={"layer": 3},
    )
    assert same == base
    assert ActivationCache.key(**{**BASE, "dtype": "torch.float32"}) == base
    with_positions = ActivationCache.key(**{**BASE, "positions": [1, 3]})
    assert ActivationCache.key(**{**BASE, "positions": torch.tensor([1, 3])}) == with_positions
    assert ActivationCache.key(**{**BASE, "positions": (1, 3)}) == with_positions
    multi = {"a": 1, "b": [1, 2], "c": "x"}
    reordered = {"c": "x", "b": [1, 2], "a": 1}
    assert ActivationCache.key(**{**BASE, "extra": multi}) == ActivationCache.key(**{**BASE, "extra": reordered})


def test_key_rejects_unserialisable_extra():
    with pytest.raises(CacheError):
        ActivationCache.key(**{**BASE, "extra": {"f": object()}})


def test_invalid_key_string_is_refused(tmp_path):
    with pytest.raises(CacheError):
        ActivationCache(tmp_path).get_or_compute("../../etc", lambda: {"x": torch.ones(1)})


# ------------------------------------------------------------- bad files


def _write_once(tmp_path) -> tuple[ActivationCache, str, Path]:
    cache = ActivationCache(tmp_path)
    key = cache.key(**BASE)
    cache.get_or_compute(key, lambda: {"x": torch.arange(4096, dtype=torch.float32), "y": torch.ones(3, 3)})
    return cache, key, cache.path_for(key)


def _fresh_compute() -> Counter:
    return Counter({"x": torch.arange(4096, dtype=torch.float32) * 2, "y": torch.zeros(3, 3)})


def _assert_recomputed(tmp_path, key, compute):
    cache = ActivationCache(tmp_path)
    out = cache.get_or_compute(key, compute)
    assert compute.calls == 1, "a bad file was served instead of recomputed"
    assert_bit_identical(out, compute.tensors)
    assert cache.stats.invalid >= 1 and cache.stats.computed == 1
    # the bad file was replaced by a good one
    again = ActivationCache(tmp_path)
    assert_bit_identical(again.get_or_compute(key, must_not_compute), compute.tensors)


def test_get_reads_without_computing_and_never_serves_a_torn_file(tmp_path):
    cache = ActivationCache(tmp_path)
    key = cache.key(**BASE)
    assert cache.get(key) is None and cache.stats.hits == 0  # nothing there, nothing computed
    tensors = all_dtypes()
    expected = {k: v.clone() for k, v in tensors.items()}
    cache.get_or_compute(key, Counter(tensors))
    assert_bit_identical(cache.get(key), expected)
    assert cache.stats.hits == 1
    assert ActivationCache(tmp_path, enabled=False).get(key) is None  # a disabled cache reads nothing
    path = cache.path_for(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert cache.get(key) is None


def test_truncated_file_is_recomputed(tmp_path):
    _, key, path = _write_once(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_recomputed(tmp_path, key, _fresh_compute())


def test_flipped_tensor_bytes_are_recomputed(tmp_path):
    _, key, path = _write_once(tmp_path)
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    middle = header_end + (len(data) - header_end) // 2
    for i in range(middle, middle + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    _assert_recomputed(tmp_path, key, _fresh_compute())


@pytest.mark.parametrize("content", [b"", b"garbage", b"\xff" * 64])
def test_garbage_file_is_recomputed(tmp_path, content):
    _, key, path = _write_once(tmp_path)
    path.write_bytes(content)
    _assert_recomputed(tmp_path, key, _fresh_compute())


def test_valid_file_for_another_key_is_not_served(tmp_path):
    _, key, path = _write_once(tmp_path)
    other_key = ActivationCache.key(**{**BASE, "site": "resid_pre"})
    other_path = ActivationCache(tmp_path).path_for(other_key)
    other_path.parent.mkdir(parents=True, exist_ok=True)
    other_path.write_bytes(path.read_bytes())
    _assert_recomputed(tmp_path, other_key, _fresh_compute())


# ------------------------------------------------------------- behaviour


def test_disabled_cache_never_touches_disk(tmp_path):
    root = tmp_path / "cache"
    cache = ActivationCache(root, enabled=False)
    compute = Counter({"x": torch.ones(2)})
    key = cache.key(**BASE)
    cache.get_or_compute(key, compute)
    cache.get_or_compute(key, compute)
    assert compute.calls == 2
    assert not root.exists()
    assert (cache.stats.hits, cache.stats.misses, cache.stats.computed) == (0, 2, 2)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_root_raises_cache_error_naming_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = blocker / "cache"
    cache = ActivationCache(root)
    compute = Counter({"x": torch.ones(2)})
    with pytest.raises(CacheError, match=str(blocker)) as info:
        cache.get_or_compute(cache.key(**BASE), compute)
    assert isinstance(info.value, MechtestError)
    assert compute.calls == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_root_raises_cache_error(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(CacheError, match=str(root)):
            ActivationCache(root).get_or_compute(ActivationCache.key(**BASE), lambda: {"x": torch.ones(1)})
    finally:
        root.chmod(0o755)


def test_compute_must_return_tensors(tmp_path):
    cache = ActivationCache(tmp_path)
    with pytest.raises(CacheError):
        cache.get_or_compute(cache.key(**BASE), lambda: {"x": [1, 2]})
    with pytest.raises(CacheError):
        cache.get_or_compute(cache.key(**BASE), lambda: torch.ones(2))


def test_failing_compute_writes_nothing_and_releases_lock(tmp_path):
    cache = ActivationCache(tmp_path, lock_timeout=5)
    key = cache.key(**BASE)

    def boom():
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        cache.get_or_compute(key, boom)
    assert not cache.path_for(key).exists()
    compute = Counter({"x": torch.ones(2)})
    cache.get_or_compute(key, compute)
    assert compute.calls == 1


def test_clear_removes_entries(tmp_path):
    root = tmp_path / "cache"
    cache = ActivationCache(root)
    key = cache.key(**BASE)
    cache.get_or_compute(key, lambda: {"x": torch.ones(2)})
    assert cache.path_for(key).exists()
    cache.clear()
    assert not root.exists()
    compute = Counter({"x": torch.ones(2)})
    cache.get_or_compute(key, compute)
    assert compute.calls == 1
    cache.clear()
    cache.clear()  # idempotent on a missing root


def test_clear_leaves_foreign_files(tmp_path):
    cache = ActivationCache(tmp_path)
    cache.get_or_compute(cache.key(**BASE), lambda: {"x": torch.ones(2)})
    (tmp_path / "notes.txt").write_text("keep me")
    cache.clear()
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ------------------------------------------------------- other processes


def _python(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


RACER = r"""
import hashlib, json, os, sys, time
import torch
from mechtest.cache import ActivationCache

# Import torch once, then fork the workers: separate processes with their own locks, like xdist workers,
# without paying for four torch imports.
root, marker, go, results = sys.argv[1:5]

def compute():
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # keep the others waiting on the lock
    return {"x": torch.randn(64, 64), "ids": torch.randint(0, 50000, (17,))}  # unseeded: differs per call

def work(i):
    while not os.path.exists(go):
        time.sleep(0.002)
    key = ActivationCache.key(fingerprint="model-abc", inputs=torch.tensor([[5, 17, 42, 9]]), site="head_out",
                              positions=None, dtype=torch.float32, extra={"layer": 3})
    cache = ActivationCache(root, lock_timeout=60)
    out = cache.get_or_compute(key, compute)
    digest = hashlib.sha256()
    for name in sorted(out):
        digest.update(name.encode()); digest.update(out[name].numpy().tobytes())
    with open(os.path.join(results, f"{i}.json"), "w") as fh:
        json.dump({"pid": os.getpid(), "key": key, "digest": digest.hexdigest(), "hits": cache.stats.hits,
                   "computed": cache.stats.computed}, fh)

pids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work(i)
            code = 0
        finally:
            os._exit(code)
    pids.append(pid)
open(go, "w").close()
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
sys.exit(max(abs(c) for c in codes))
"""


@pytest.mark.slow
def test_racing_processes_compute_once_and_share(tmp_path):
    root, marker, go, results = tmp_path / "cache", tmp_path / "computed.txt", tmp_path / "go", tmp_path / "res"
    results.mkdir()
    proc = _python(RACER, str(root), str(marker), str(go), str(results))
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    reports = [json.loads(p.read_text()) for p in sorted(results.iterdir())]

    assert len(reports) == 4 and len({r["pid"] for r in reports}) == 4
    assert len(marker.read_text().split()) == 1, "compute ran more than once"
    assert {r["key"] for r in reports} == {ActivationCache.key(**BASE)}  # same key in every process
    assert len({r["digest"] for r in reports}) == 1, "workers got different data"
    assert sorted(r["computed"] for r in reports) == [0, 0, 0, 1]
    assert sorted(r["hits"] for r in reports) == [0, 1, 1, 1]


KILLED_WRITER = r"""
import os, sys, time
import torch
import mechtest.cache as mc

root, key = sys.argv[1:3]

def half_then_hang(fh, data):
    fh.write(data[: len(data) // 2])
    fh.flush()
    os.fsync(fh.fileno())
    print("half", flush=True)
    time.sleep(120)

mc._write_all = half_then_hang
mc.ActivationCache(root).get_or_compute(key, lambda: {"x": torch.arange(200_000, dtype=torch.float32)})
"""


def test_writer_killed_mid_write_leaves_no_torn_file(tmp_path):
    root = tmp_path / "cache"
    key = ActivationCache.key(**BASE)
    final = ActivationCache(root).path_for(key)
    proc = _python(KILLED_WRITER, str(root), key)
    try:
        assert proc.stdout.readline().strip() == "half", proc.stderr.read()
        strays = list(final.parent.glob("*.tmp"))
        assert len(strays) == 1 and strays[0].stat().st_size > 0  # the half-written temp file
        assert not final.exists()
        # a lock-free reader looking now finds nothing to serve, then waits on the writer's lock
        reader = ActivationCache(root, lock_timeout=0.2)
        with pytest.raises(CacheError, match="lock"):
            reader.get_or_compute(key, must_not_compute)
        assert reader.stats.invalid == 0 and reader.stats.hits == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    assert not final.exists(), "a killed writer left a file at the final path"
    assert list(final.parent.glob("*.tmp")), "expected the killed writer's stray temp file"

    cache = ActivationCache(root, lock_timeout=20)  # the dead writer's lock must be free
    compute = Counter({"x": torch.arange(200_000, dtype=torch.float32)})
    out = cache.get_or_compute(key, compute)
    assert compute.calls == 1
    assert_bit_identical(out, compute.tensors)
    assert not list(final.parent.glob("*.tmp")), "stray temp file not cleaned up"
    assert_bit_identical(ActivationCache(root).get_or_compute(key, must_not_compute), compute.tensors)



# ---------------------------------------------------------------- permissions


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_cache_files_honour_the_umask(tmp_path, umask, mode):
    """mkstemp creates 0600 files; a cache shared by a group must get the umask's mode like any other file."""
    old = os.umask(umask)
    try:
        cache, key, path = _write_once(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    lock = Path(f"{path}.lock")
    if lock.exists():  # filelock may delete it on release
        assert lock.stat().st_mode & 0o777 == mode
