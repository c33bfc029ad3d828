"""Errors a user can act on. The CLI prints their message as one line and exits 2."""


class BlackboxError(Exception):
    """Base class: a problem with the user's input, model, endpoint or budget."""


class InputError(BlackboxError):
    """A file, shape, option or target the toolkit cannot use."""


class ModelError(BlackboxError):
    """An unknown model, or a model/endpoint that failed or answered nonsense."""


class BudgetExceeded(BlackboxError):
    """Raised *before* a query that would spend more than the budget allows."""


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
