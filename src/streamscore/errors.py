"""One error hierarchy, so every caller knows what a failure means for the stream.

- ``InvalidEvent``: the input can never be processed; it goes to the dead-letter topic.
- ``TransientError``: the outside world hiccuped; retry with backoff, commit nothing.
- ``ConfigError``: the service cannot start as configured; fatal with a clear message.
- ``CheckpointError``: a model checkpoint is unsigned, tampered with or unreadable.
- ``DeadLetterLimitExceeded``: most input is bad (a wrong topic, say); stop and say so.
- ``RetryAbandoned``: a stop was asked for while a step was still failing; nothing committed.
"""

from __future__ import annotations


class StreamscoreError(Exception):
    """Base of every error streamscore raises on purpose."""


class InvalidEvent(StreamscoreError):  # noqa: N818 - reads better at call sites
    """An input record that breaks the contract; dead-lettered, never retried."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class TransientError(StreamscoreError):
    """A failure of Kafka or Redis that may pass; the batch is retried, nothing committed."""


class ConfigError(StreamscoreError):
    """Settings that cannot work; the message says what to change."""


class CheckpointError(StreamscoreError):
    """A model checkpoint that must not be loaded (bad signature, unknown key, corrupt)."""


class DeadLetterLimitExceeded(StreamscoreError):  # noqa: N818
    """Too large a share of recent input was invalid; the service stops rather than drain it."""


class RetryAbandoned(StreamscoreError):  # noqa: N818
    """A stop came while a step kept failing: the batch in hand stays uncommitted.

    Giving up is safe at every step. Before the save, nothing of the batch is stored and Kafka
    redelivers it; after the save, redelivered records are recognised as applied.
    """

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(f"gave up on {step!r} to stop ({cause})")
        self.step = step
