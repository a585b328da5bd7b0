"""Errors that carry a message meant for the person at the station, not a traceback."""


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says why and what to do."""


class StorageError(UserError):
    """The image store cannot keep a part's bytes (a full or read-only disk): the run stops,
    since judging parts whose images are not kept would lose them; what was written stays."""
