"""Outcomes the serving engine reports: request states, status codes and the error carrying them."""
import dataclasses
import enum


class GenerateStatus(enum.Enum):
    """Where a request stands (MindIE's names)."""

    Init = "init"  # admitted, waiting for a free row of the running batch
    ContextFinished = "context_finished"  # prompt processed, first token produced
    Generating = "generating"
    GenerateFinished = "finished"  # end of sequence or a length limit
    GenerateInterrupted = "interrupted"  # released or stopped early; the tokens produced so far are kept


class StatusCode(enum.Enum):
    """Why a call was refused; the server maps each code to an HTTP status (``HTTP_STATUS``)."""

    OK = "ok"
    INVALID_REQUEST = "invalid_request"  # bad settings, prompt too long, adapter over the limits, bad files
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_ADAPTER = "unknown_adapter"
    CONFLICT = "conflict"  # name already loaded, adapter in use, adapter pool full
    QUEUE_FULL = "queue_full"  # the waiting queue is at max_queue; retry later
    NOT_RUNNING = "not_running"  # installed but not started, or stopping


HTTP_STATUS = {
    StatusCode.OK: 200, StatusCode.INVALID_REQUEST: 400, StatusCode.UNKNOWN_MODEL: 404,
    StatusCode.UNKNOWN_ADAPTER: 404, StatusCode.CONFLICT: 409, StatusCode.QUEUE_FULL: 429,
    StatusCode.NOT_RUNNING: 503,
}


@dataclasses.dataclass(frozen=True)
class Status:
    """The outcome of an engine call: ``code`` and, when refused, a ``message`` saying why and what to do."""

    code: StatusCode = StatusCode.OK
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is StatusCode.OK

    def __bool__(self) -> bool:
        return self.ok


class ServingError(Exception):
    """An engine call that was refused (``load_lora``, ``install_model``, ...), with its :class:`StatusCode`."""

    def __init__(self, code: StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> Status:
        return Status(self.code, self.message)
