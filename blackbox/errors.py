"""Every error class of blackbox, in one module. The CLI prints their message as one line and exits 2."""


class BlackboxError(Exception):
    """Base class: a problem with the user's input, model, endpoint or budget."""


class InputError(BlackboxError):
    """A file, shape, option or target the toolkit cannot use."""


class ModelError(BlackboxError):
    """An unknown model, or a model/endpoint that failed or answered nonsense."""


class NoSignal(ModelError):
    """A probe found that the model's answers carry no signal for what is being learned (every
    score alike): raised before the budget is spent, with what the probe cost and what to do."""


class BudgetExceeded(BlackboxError):
    """Raised *before* a query that would spend more than the budget (or its deadline) allows."""


class MissingDependency(BlackboxError):
    """An optional dependency (an extra) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is needed{what} but is not installed: "
            f"pip install 'blackbox-lr[{extra}]'"
        )
        self.package = package
        self.extra = extra


class RetryableError(ModelError):
    """One attempt at a remote request failed in a way worth retrying (429, 5xx, timeout,
    connection, malformed or unusable answer). ``maybe_billed``: the endpoint may have charged
    for it (it answered, or the request was sent and no answer came), so it counts as spent.
    Which outcome is which is decided in one place: ``blackbox.adapters.remote.outcomes``."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 maybe_billed: bool = False):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed


class EndpointRefused(ModelError):
    """The endpoint refused the request (400/401/403/404...): retrying cannot help."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
