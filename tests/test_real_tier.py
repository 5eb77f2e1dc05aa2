"""suites/real: without the fetched model every item is skipped naming the fetch command and marked ``real``;
with a model file present the tier registers it by name (command-line names win)."""

from __future__ import annotations

import shutil
from pathlib import Path

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


def _tier(pytester) -> Path:
    root = pytester.path
    shutil.copytree(REPO / "suites" / "real", root / "suites" / "real")
    shutil.copytree(REPO / "fixtures" / "real", root / "fixtures" / "real")
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    real: the real tier\n")
    return root


def test_without_the_model_the_tier_skips_naming_the_fetch_command(pytester, tmp_path):
    _tier(pytester)
    result = pytester.runpytest_inprocess("suites/real", "-p", "no:cacheprovider", "-rs",
                                          f"--mechtest-cache-dir={tmp_path}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) >= 9 and not outcomes.get("passed") and not outcomes.get("failed")
    result.stdout.fnmatch_lines(["*python -m tools.real fetch*"])
    deselected = pytester.runpytest_inprocess("suites/real", "-p", "no:cacheprovider", "-m", "not real",
                                              f"--mechtest-cache-dir={tmp_path}")
    assert deselected.parseoutcomes().get("deselected", 0) >= 3


def test_with_the_model_file_present_the_tier_registers_it(pytester, tmp_path):
    root = _tier(pytester)
    gguf = root / ".real" / "qwen" / "model.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"not a gguf")  # registered by name; loading it then fails naming the file
    result = pytester.runpytest_inprocess("suites/real", "-p", "no:cacheprovider", "-k", "qwen-accuracy",
                                          f"--mechtest-cache-dir={tmp_path}")
    out = result.stdout.str()
    assert "not configured" not in out and "not fetched" not in out
    assert "model.gguf" in out and result.parseoutcomes().get("failed") == 1


def test_a_real_tier_item_runs_on_every_core_and_gives_the_thread_count_back(pytester, tmp_path, monkeypatch):
    """The repository's conftest runs the zoo on one thread; a real-tier item must not (a cold Qwen verdict took
    455 s on one thread of 2 cores, 263 s on both)."""
    import torch

    monkeypatch.delenv("MECHTEST_THREADS", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    root = _tier(pytester)
    gguf = root / ".real" / "qwen" / "model.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"not a gguf")  # the tier runs its items (nothing here loads it)
    (root / "conftest.py").write_text("def pytest_configure(config):\n    import torch\n    torch.set_num_threads(1)\n")
    (root / "suites" / "real" / "test_threads.py").write_text(
        "import os\nimport torch\n\n\ndef test_threads():\n"
        "    assert torch.get_num_threads() == len(os.sched_getaffinity(0))\n")
    (root / "test_after.py").write_text("import torch\n\n\ndef test_after():\n"
                                         "    assert torch.get_num_threads() == 1\n")  # given back after the item
    before = torch.get_num_threads()
    try:
        result = pytester.runpytest_inprocess("suites/real/test_threads.py", "test_after.py", "-p",
                                              "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}")
    finally:
        torch.set_num_threads(before)
    result.assert_outcomes(passed=2)
