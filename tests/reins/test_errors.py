"""reins.errors' quoting of library exceptions in one-line errors."""

from reins.errors import first_line, quote_error


def test_quote_error_takes_the_first_line_cut_at_the_limit_or_the_type_name():
    assert first_line(ValueError("  bad header\nat byte 3\n")) == "bad header"
    assert quote_error(ValueError("bad header\nat byte 3")) == "bad header"
    assert quote_error(OSError("x" * 300)) == "x" * 200
    assert quote_error(OSError("abcdef"), limit=3) == "abc"
    assert quote_error(KeyError()) == "KeyError"          # no message: the type says what went wrong
    assert quote_error(RuntimeError("   ")) == "RuntimeError"
