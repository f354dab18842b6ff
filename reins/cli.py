"""The `reins` command: one subcommand per stage, each `reins <stage> --config FILE [key=value ...]`.

The top floor: it imports the stage modules (lazily, so `reins --help` stays fast and lists only the stages
installed in this checkout) and dispatches to their `main`; no stage imports it. The stage table and the
`main` every stage shares live in reins/entry.py.
"""

from __future__ import annotations

import importlib
import sys

from reins.entry import available_stages


def _usage() -> str:
    lines = ["usage: reins <stage> --config FILE [key=value ...] [--quiet]", "", "stages:"]
    for name, (_, desc) in available_stages().items():
        lines.append(f"  {name:<12} {desc}")
    lines += ["", "Each stage also runs as `accelerate launch -m <module> --config FILE`.",
              "`reins <stage> --help` lists that stage's config keys with their types, defaults and help."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from reins import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    stages = available_stages()
    if name not in stages:
        print(f"reins: unknown stage '{name}' (available: {', '.join(stages)})", file=sys.stderr)
        return 2
    module = importlib.import_module(stages[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
