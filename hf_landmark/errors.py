"""The one exception type for a user's mistake (a bad file, a wrong argument, a missing folder).

The command line prints such an error as one line, ``error: <what>: <what is wrong and what
to do>``, and exits with code 2; anything else is a bug and keeps its traceback.
Depends on nothing, so it can travel with a model's remote code.
"""


class UserInputError(ValueError):
    """A problem with the user's input; the message names the file or argument and the fix."""


class MissingExtraError(UserInputError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hugging Face Hub id, ``org/name``."""
    import re

    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.startswith(".")


def require_folder_or_repo(path: str, what: str, hint: str = "") -> None:
    """Refuse, naming ``path``, anything that is neither an existing folder nor a Hub id
    (a missing local path would otherwise be looked up on the Hub and fail obscurely)."""
    import os

    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UserInputError(f"{path}: expected a {what} folder, found a file" + (f"; {hint}" if hint else ""))
    if not is_repo_id(path):
        raise UserInputError(f"{path}: no such {what} folder (nor a Hub id 'org/name')" + (f"; {hint}" if hint else ""))
