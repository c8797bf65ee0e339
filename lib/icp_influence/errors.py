"""Typed errors. Every message says what was wrong and how to fix it.

All errors derive from :class:`IcpError`, so callers (and the command line, which turns
them into exit code 2 without a traceback) can catch one type.
"""
from __future__ import annotations


class IcpError(Exception):
    """Base class of every error this library raises on bad input or bad state."""


class DataFormatError(IcpError, ValueError):
    """A data file or record is malformed (bad JSON, invalid UTF-8, missing fields)."""


class EmptyPoolError(IcpError, ValueError):
    """A pool or probe set has no examples."""


class DuplicateIdError(IcpError, ValueError):
    """Two examples share one id."""


class ModelSpecError(IcpError, ValueError):
    """The model spec names nothing this library can load."""


class ModelFilesError(IcpError, FileNotFoundError):
    """Model files are missing or incomplete."""


class HubUnreachableError(IcpError, ConnectionError):
    """The Hugging Face hub cannot be reached (offline mode or no network)."""


class ContextTooLongError(IcpError, ValueError):
    """An encoded example does not fit in the model's context window."""


class TemplateError(IcpError, ValueError):
    """Unknown prompt template, or a template the tokenizer cannot render."""


class MethodError(IcpError, ValueError):
    """Unknown scoring method or invalid method parameters."""


class ConfigError(IcpError, ValueError):
    """An invalid argument or configuration value (k too large, damping <= 0, ...)."""


class TokenizerMismatchError(IcpError, ValueError):
    """The tokenizer does not match the model (vocabulary larger than the embedding)."""


class ResumeMismatchError(IcpError, ValueError):
    """A run directory holds a run started with different arguments."""


class CorruptFileError(IcpError, ValueError):
    """A stored chunk or score file is corrupted or truncated."""


class RunLockedError(IcpError, RuntimeError):
    """Another live process is already scoring the same run directory (or the same shard)."""


class DiskFullError(IcpError, OSError):
    """A write failed because the disk (or quota) is full; finished files are kept."""


class NonFiniteScoreError(IcpError, FloatingPointError):
    """Scores contain NaN or inf; the message lists the offending ids."""


class UnknownNameError(IcpError, KeyError):
    """An experiment or benchmark name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
