"""User-facing errors.

Every mistake a user can make (bad data, bad config, bad model path, bad flag) raises a
`QACompressError`. The CLI prints it as one line and exits with status 2; a traceback is shown only
with `--debug`. Library users catch the class they care about.
"""

from __future__ import annotations


class QACompressError(Exception):
    """Base class of errors caused by the user's input rather than by a bug."""

    exit_code = 2


class DataError(QACompressError):
    """A data file or record is malformed; the message names file, record and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.record, self.field, self.reason = file, record, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [message]))


class ConfigError(QACompressError):
    """A compression config is malformed; the message names the file and the key."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file, self.key, self.reason = file, key, message
        where = [str(file)] if file else []
        if key:
            where.append(f"key '{key}'")
        super().__init__(": ".join(where + [message]))


class ModelError(QACompressError):
    """A model or tokenizer cannot be used (missing path, no fast tokenizer, not QA-capable)."""


class BudgetError(QACompressError, ValueError):
    """A cost budget below what no pruning removes (the fixed cost of embeddings, QA head, per-layer
    overheads): `smallest` is the least fraction of the full cost that can be reached, rounded up to
    three decimals, so that a budget of exactly `smallest` is accepted."""

    def __init__(self, message: str, *, fraction: float, smallest: float, remove_layers: bool = False) -> None:
        self.fraction, self.smallest, self.remove_layers = fraction, smallest, remove_layers
        super().__init__(message)

    @property
    def what_stays(self) -> str:
        """What no pruning removes, for the refusal to say: with `--remove_layers`, one layer's overheads."""
        if self.remove_layers:
            return "embeddings, the QA head and the last layer's overheads stay"
        return "embeddings, the QA head and per-layer overheads stay unless --remove_layers"
