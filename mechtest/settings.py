"""Run-wide settings: what the plugin reads from its options and ini (``plugin._settings``, the one place
they are built and checked), or what a hand-made :class:`~mechtest.api.Mechtest` is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechtest.model_registry import ModelSpec


@dataclass
class Settings:
    """Run-wide options of the plugin (or of a hand-made :class:`~mechtest.api.Mechtest`)."""

    models: dict[str, ModelSpec] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    cache_dir: Path = Path(".mechtest_cache")
    prompts: int | None = None
    report_dir: Path | None = None
    update_snapshots: bool = False
    inconclusive: str | None = None  # "pass" | "fail" | "xfail": overrides every claim's own policy
    recompute: bool = False  # ignore cached claim results
    max_models: int | None = None  # at most this many models resident; the least recently used is released
