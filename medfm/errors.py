"""Errors a user can cause. Every message names the thing that is wrong.

``MedFMError`` is the root. The CLI turns ``UsageError`` into exit code 2 and any
other ``MedFMError`` into exit code 1 with the message alone (no traceback).
"""
from __future__ import annotations


class MedFMError(Exception):
    """Base class of every error medfm raises on purpose."""


class UsageError(MedFMError):
    """A wrong command line, config key or name (exit code 2)."""


class ConfigError(UsageError):
    """A config value that cannot work (unknown key, wrong type, unknown registry name)."""


class DataError(MedFMError):
    """Input data that cannot be used.

    Args:
        message: what is wrong, in words.
        source: the file, record or sample id concerned. Never a patient identifier
            taken from a DICOM header: callers pass a path or a manifest id.
        field: the column, header field or lead concerned, when there is one.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        # one line: reader libraries (MONAI, nibabel, pydicom) raise multi-line messages
        message = " ".join(str(message).split())
        self.reason = message
        self.source = None if source is None else str(source)
        self.field = field
        parts = [p for p in (self.source, field) if p]
        super().__init__(": ".join(parts + [message]) if parts else message)


class CheckpointError(MedFMError):
    """A checkpoint directory that is missing files, or was made by another model."""

    def __init__(self, message: str = ""):
        super().__init__(" ".join(str(message).split()))  # one line (torch/safetensors messages span many)


class UnusableDataError(DataError):
    """A run that learned from nothing: no usable sample, an objective with nothing to work on
    over the whole run, or too many unusable rows (:mod:`medfm.data.skips`).

    Args:
        details: the multi-line summary (counts per reason, examples, what to change) the CLI
            prints to stderr after the one-line message.
        record: the same as a JSON-ready mapping.
    """

    def __init__(self, message: str, *, source: str | None = None, details: str = "",
                 record: dict | None = None):
        super().__init__(message, source=source)
        self.details = details
        self.record = dict(record or {})
