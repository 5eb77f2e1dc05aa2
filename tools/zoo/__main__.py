"""``python -m tools.zoo {build,gate-controls,planted,scratch,probe,distil} ...``: rebuild the shipped fixture checkpoints.

``build`` makes the shipped zoo and controls (tools/zoo/fallback.py: students distilled from noised planted models,
their fine-tunes and controls; ``build --only NAME`` one recipe, ``build --measure`` measures them all);
``gate-controls`` fine-tunes the gate-statistics controls from the shipped base (tools/zoo/gate_controls.py);
``planted`` and ``planted-ioi`` write the hand-built models; ``scratch`` is the from-scratch trainer (tools/zoo/train.py), whose
recipes did not form a faithful circuit on CPU.
``probe`` measures a model's robustness to weight noise, fine-tunes and rerouting (tools/zoo/robust.py,
tools/zoo/ROBUST.md); ``distil`` trains a normally initialised student on a base candidate and probes it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"build": "tools.zoo.fallback", "gate-controls": "tools.zoo.gate_controls",
                "planted": "tools.zoo.planted", "planted-ioi": "tools.zoo.planted_ioi", "scratch": "tools.zoo.train", "probe": "tools.zoo.robust",
                "distil": "tools.zoo.distil"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m tools.zoo {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
