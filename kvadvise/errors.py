"""One error hierarchy; each class carries the documented exit code (see README, "Exit codes").

0 ok; 1 internal error (a bug); 2 bad input; 3 environment (no GPU, NVML, out of device memory);
4 a CI gate failed.
"""

from __future__ import annotations


class KvadviseError(Exception):
    """Base of every error kvadvise reports on purpose. Exit code 1 means a bug."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(KvadviseError):
    """Bad option value, unreadable or malformed config, unsupported architecture, impossible request."""

    exit_code = 2


class EnvironmentProblem(KvadviseError):
    """No GPU where one is needed, NVML unavailable, out of device memory."""

    exit_code = 3


class OutOfDeviceMemory(EnvironmentProblem):
    """The device ran out of memory during a named phase (load, dummy run, graph capture)."""

    def __init__(self, phase: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.phase = phase


class GateFailed(KvadviseError):
    """A CI gate (--min-tokens, --min-concurrency, a check finding) failed; the report was still written."""

    exit_code = 4
