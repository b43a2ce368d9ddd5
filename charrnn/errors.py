"""Errors a user can fix, and a console that never crashes on a character.

Library code raises `UserError`; only the scripts turn it into `error: ...` on
stderr and exit code 2. Standard library only, so every module may import it.
"""

import sys


class UserError(Exception):
    """An error the user can fix. Its message is ONE line naming the file/flag/value at
    fault and the fix. The CLIs print it and exit 2 with no traceback."""


def safe_console():
    """Never crash on a console that cannot show a character (a cp1252 Windows
    console, a C locale): such characters print as '?' instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
