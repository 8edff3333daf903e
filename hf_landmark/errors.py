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


def can_only_be_a_path(text: str) -> bool:
    """Whether ``text`` can only mean a local path: it starts with ``/``, ``.`` or ``~``, has
    more than one ``/``, a backslash or a Windows drive (``C:``)."""
    import re

    return (
        text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or "\\" in text
        or re.match(r"[A-Za-z]:", text) is not None
    )


def resolve_folder_or_repo(value, arg: str, what: str, hint: str = "") -> str:
    """The one reading of a folder-or-Hub-repo argument (``--init``, ``--model``, ``--dataset`` ...):
    an existing local folder is used (``~`` expanded); anything that can only be a path and
    does not exist is ``<arg>: <value>: no such <what> folder``; a Hub id ``org/name`` is
    returned for the Hub (:func:`hub_load_error` words a failed download, offline included).
    Raises :class:`UserInputError` naming ``arg``; ``hint`` says what the argument takes."""
    import os

    value = os.fspath(value)
    local = os.path.expanduser(value)
    tail = f"; {hint}" if hint else ""
    prefix = f"{arg}: " if arg else ""
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise UserInputError(f"{prefix}{value}: expected a {what} folder, found a file{tail}")
    if can_only_be_a_path(value) or not is_repo_id(value):
        raise UserInputError(f"{prefix}{value}: no such {what} folder (nor a Hub id 'org/name'){tail}")
    return value


def require_folder_or_repo(path, what: str, hint: str = "", arg: str = "") -> None:
    """:func:`resolve_folder_or_repo`, for a caller that keeps its own value."""
    resolve_folder_or_repo(path, arg, what, hint)


def hub_load_error(value: str, arg: str, what: str, err: Exception) -> UserInputError:
    """A :class:`UserInputError` for a Hub id that could not be loaded, saying when the Hub is
    offline (``HF_HUB_OFFLINE``) rather than leaving a library's traceback."""
    import os

    prefix = f"{arg}: " if arg else ""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return UserInputError(
            f"{prefix}{value}: no such local {what} folder, and the Hub is offline (HF_HUB_OFFLINE=1) "
            "with no cached copy; download it first or pass a folder"
        )
    return UserInputError(
        f"{prefix}{value}: no such local {what} folder, and loading it from the Hub failed "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )
