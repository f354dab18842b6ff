"""`python -m pgcore`: list every public pgcore function with the first line of its docstring."""

import importlib
import inspect

from pgcore import MODULES


def listing() -> str:
    lines = []
    for name in MODULES:
        mod = importlib.import_module(f"pgcore.{name}")
        lines.append(f"pgcore.{name}: {(mod.__doc__ or '').strip().splitlines()[0] if mod.__doc__ else ''}")
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                doc = (inspect.getdoc(obj) or "").splitlines()
                lines.append(f"  {attr:<28} {doc[0] if doc else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    import os
    import sys

    try:
        print(listing(), flush=True)
    except BrokenPipeError:  # `python -m pgcore | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
