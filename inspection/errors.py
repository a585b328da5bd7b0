"""Errors that carry a message meant for the person at the station, not a traceback."""


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says why and what to do."""
