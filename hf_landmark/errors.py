"""The one exception type for a user's mistake (a bad file, a wrong argument, a missing folder).

The command line prints such an error as one line, ``error: <what>: <what is wrong and what
to do>``, and exits with code 2; anything else is a bug and keeps its traceback.
Depends on nothing, so it can travel with a model's remote code.
"""


class UserInputError(ValueError):
    """A problem with the user's input; the message names the file or argument and the fix."""
