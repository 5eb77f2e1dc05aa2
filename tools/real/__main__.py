"""``python -m tools.real {fetch,convert,sweep,finetune,measure,report} ...``: the real-model (Qwen GGUF) tooling."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"fetch": "tools.real.fetch", "convert": "tools.real.convert",
            "sweep": "tools.real.sweep", "finetune": "tools.real.finetune",
            "measure": "tools.real.measure", "report": "tools.real.report"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m tools.real {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
