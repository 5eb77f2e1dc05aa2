"""An unexpected exception inside a claim, shown as the claim, the metric, the cause and only the frames of
mechtest and of the user's own code.

pytest would print every frame of torch, transformers, pytest and pluggy as well (hundreds of lines per
claim); those are cut here, and ``--tb=long`` shows them all.
"""

from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path

_MECHTEST = Path(__file__).resolve().parents[1]
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_INSTALLED = ("site-packages", "dist-packages")


def own_frame(filename: str) -> bool:
    """A frame of mechtest or of the user's code (not the standard library, not an installed package)."""
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(_MECHTEST):
        return True
    return not path.is_relative_to(_STDLIB) and not any(part in _INSTALLED for part in path.parts)


def claim_error_text(claim, model_name: str, error: BaseException) -> str:
    """The claim, the metric, the cause and the traceback cut to mechtest's and the user's frames."""
    cause = str(error).strip() or repr(error)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if own_frame(f.filename)]
    lines = [f"claim {claim.id!r} on model {model_name!r}: metric {claim.metric!r} raised "
             f"{type(error).__name__}: {cause.splitlines()[0]}",
             "traceback, mechtest's and your frames only (--tb=long shows every frame):"]
    lines += [line.rstrip("\n") for line in traceback.format_list(frames)]
    lines.append(f"{type(error).__name__}: {cause}")
    return "\n".join(lines)
