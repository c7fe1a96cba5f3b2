"""The one exception type the command line turns into a clear one-line message."""


class StorytellerError(Exception):
    """A user-facing error: bad input, missing files, incompatible artefacts.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback,
    so the message must say what went wrong *and* what to do about it.
    """
