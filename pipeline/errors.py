"""Errors a user can meet. The command line prints their message, never a traceback."""


class UserError(Exception):
    """Bad input or a missing resource; the message names the file or value and says what to do."""


class DatasetError(UserError):
    """A dataset on disk is missing, malformed or inconsistent."""


class WeightsUnavailableError(UserError):
    """Pretrained weights could not be found or downloaded."""
