"""One error hierarchy, so every caller knows what a failure means for the stream.

- ``InvalidEvent``: the input can never be processed; it goes to the dead-letter topic.
- ``TransientError``: the outside world hiccuped; retry with backoff, commit nothing.
- ``ConfigError``: the service cannot start as configured; fatal with a clear message.
- ``CheckpointError``: a model checkpoint is unsigned, tampered with or unreadable.
- ``DeadLetterLimitExceeded``: most input is bad (a wrong topic, say); stop and say so.
- ``RetryAbandoned``: a stop was asked for while a step was still failing; nothing committed.
- ``NewerFormatError``: a stored record needs a newer streamscore (a rolling upgrade is under
  way); a transient error: the batch is retried until another process takes the partition.
- ``StoredFormatError``: a stored record that no version can read (corrupt, or too old).
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


class NewerFormatError(TransientError):
    """A stored record that only a newer streamscore can read.

    In a rolling upgrade the new version may already have written a user's state (or the
    model checkpoint) when an old process gets its partition back. Refusing it must not
    crash the old process: the batch is retried with backoff and nothing is committed, so
    the process stays up until the new version takes its partitions (or is rolled back).
    """

    def __init__(self, what: str, written: int, needs: int, reads: int) -> None:
        super().__init__(
            f"{what} was written by stored format v{written} and needs a reader of v{needs} "
            f"or later; this streamscore reads up to v{reads}. A newer streamscore is running: "
            "finish the rolling upgrade (stop this process so the new version takes its "
            "partitions) or roll the new version back"
        )
        self.written = written
        self.needs = needs
        self.reads = reads


class StoredFormatError(StreamscoreError):
    """A stored record that is corrupt, or older than any upgrade step reads."""


class ConfigError(StreamscoreError):
    """Settings that cannot work; the message says what to change."""


class CheckpointError(StreamscoreError):
    """A model checkpoint that must not be loaded (bad signature, unknown key, corrupt)."""


class CheckpointTooNew(CheckpointError):  # noqa: N818 - a kind of CheckpointError
    """A model checkpoint written by a newer streamscore, refused before it is unpickled."""


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
