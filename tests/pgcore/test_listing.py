"""`python -m pgcore` lists every public function of pgcore and stops quietly when its reader does."""

import inspect
import subprocess
import sys

import pgcore
from pgcore.__main__ import listing


def test_listing_names_every_public_function():
    text = listing()
    for name in pgcore.MODULES:
        mod = __import__(f"pgcore.{name}", fromlist=["_"])
        public = [a for a, o in vars(mod).items() if not a.startswith("_") and inspect.isfunction(o)
                  and o.__module__ == mod.__name__]
        assert public, name
        for attr in public:
            assert f"  {attr} " in text, f"pgcore.{name}.{attr} missing from the listing"


def test_reader_closing_the_pipe_is_not_an_error():
    # `python -m pgcore | head -1`: the reader closes after one line; no BrokenPipeError traceback, exit 0
    proc = subprocess.Popen([sys.executable, "-m", "pgcore"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
