"""``python -m tools.zoo {build,planted,fallback} ...``: rebuild the shipped fixture checkpoints."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"build": "tools.zoo.train", "planted": "tools.zoo.planted", "fallback": "tools.zoo.fallback"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m tools.zoo {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
