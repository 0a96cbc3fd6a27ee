"""Errors a user can fix. The CLI prints their message in one red line and exits 1."""


class FinetuneError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ConfigError(FinetuneError):
    """The recipe or an override is invalid."""


class DataError(FinetuneError):
    """The dataset cannot be used as given."""


class CheckpointError(FinetuneError):
    """A checkpoint or weights file cannot be loaded safely or does not fit the model."""


class ResourceError(FinetuneError):
    """The machine lacks what the run needs: disk space for checkpoints, memory for a batch."""


class RunInterrupted(FinetuneError):
    """Ctrl-C or SIGTERM stopped the run after saving last.pt; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class RankLost(FinetuneError):
    """Another process of a data-parallel run stopped; the message says what last.pt holds and how to go on."""


class ExportError(FinetuneError):
    """A model cannot be exported in the asked format, or the export does not match the eager model."""


class TrainingDiverged(FinetuneError):
    """The loss or the weights stopped being finite numbers; the message says where and what to lower."""


class NonFiniteLoss(Exception):
    """Raised by a training step before it updates anything; the run turns it into TrainingDiverged."""

    def __init__(self, value: float):
        super().__init__(f"loss {value}")
        self.value = value


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to `limit` characters (its type's name when it has none): what
    a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
