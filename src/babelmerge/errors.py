"""User-facing errors.

Anything the user can fix (a bad path, a bad config key, incompatible models) raises
:class:`BabelmergeError` with one line naming the culprit. The CLI prints that line and exits
with status 2; any other exception is a bug in babelmerge and keeps its traceback.
"""


class BabelmergeError(Exception):
    """An error caused by the user's input. ``str(err)`` is a complete one-line message."""

    exit_code = 2
