"""The one exception a user can cause.

Anything the user can get wrong (a path, a card key, a corrupt checkpoint) raises SparcEvalError
with one sentence that names the file or value. The CLI prints it on one line and exits with 2.
"""

_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"


class SparcEvalError(Exception):
    """A user-caused error; its message is a single sentence naming the offending file or value."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        # A DataLoader worker's error comes back as type(f"Caught ... in DataLoader worker process N.{traceback}");
        # keep the worker's own sentence, the traceback's last line.
        if text.startswith("Caught ") and _WORKER_TRACEBACK in text:
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(text)
