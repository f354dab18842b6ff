"""Errors a user can cause. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class ReinsError(Exception):
    """Base class: bad input or an impossible request, reported as a one-line message."""

    exit_code = 2


class ConfigError(ReinsError):
    """A config file or override names an unknown key, has the wrong type or an impossible value."""


class DataError(ReinsError):
    """A dataset, file or environment is missing, malformed or inconsistent."""


class NonFiniteError(ReinsError):
    """A NaN/inf appeared in a loss, reward, logit or observation; the last good checkpoint is kept."""

    exit_code = 3


def first_line(e: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): what a one-line error quotes of a
    library's multi-line message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def quote_error(e: BaseException, limit: int = 200) -> str:
    """What a one-line error quotes of a library's exception: the first line of its message, cut at `limit`
    characters, or the exception's type name when the message is empty."""
    return first_line(e)[:limit] or type(e).__name__
