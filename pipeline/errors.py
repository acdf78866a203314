"""The one module that defines slimpipe's errors.

The CLI prints a `SlimpipeError` as one line and exits with code 2. Messages say what was
expected, what was received and how to fix it.
"""


class SlimpipeError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class ConfigError(SlimpipeError, ValueError):
    """Bad user input: recipe, parameters, model file, data set."""


class StageError(SlimpipeError):
    """A stage failed; the message names the stage and the artifact it was working on."""


class ExportValidationError(SlimpipeError):
    """An exported model does not reproduce the Keras reference within tolerance."""
