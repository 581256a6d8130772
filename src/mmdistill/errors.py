"""The one exception type that means "the user's input is wrong".

The CLI turns it into a single readable line and exit code 2; everything else is a bug or an
environment failure (exit 1, traceback kept). Raising it early, before any file is written,
is how we keep the promise that bad input never leaves a half-written run directory.
"""


class UserError(Exception):
    """Bad config or bad data. The message must name the key, file, row or column."""
