"""The seam between scoring and learning.

The scorer never learns: it predicts with a lineage's models and hands what the lineage
learns from to a ``Learner``. However many scorers share a consumer group, there is one
lineage (DESIGN.md §4): every scorer's learner is a ``TrainingOutbox``
(``training_records.py``), whose records the runtime publishes to the one-partition
``training-examples`` topic with the batch's other outputs; the one trainer that owns that
partition learns them in the topic's order and publishes signed versions of its
``Lineage``, which every scorer predicts with (``streamscore/training.py``,
``streamscore/model_checkpoints.py``). ``demo`` and ``replay`` run the same trainer over an
in-memory topic after every batch.

The ``Trainer`` (``trainer.py``) is a ``Learner`` too, learning at each call: what the
trainer does with each record, and what unit tests of the scorer's semantics use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from streamscore.core.values import CustomerObservation, Output, PopulationSample, TrainingExample

if TYPE_CHECKING:
    from streamscore.core.models import Models
    from streamscore.core.segments import RfmScorer


class Learner(Protocol):
    """Where the scorer hands what the lineage learns from."""

    def learn(self, example: TrainingExample) -> None:
        """A resolved label: validate it against its stored prediction, then learn it."""
        ...

    def observe(self, sample: PopulationSample) -> None:
        """A customer at a snapshot: the population the RFM quantiles are fitted to."""
        ...

    def wants(self, key_hash: int) -> bool:
        """Whether the population model's sample takes this customer's observations (the
        scorer asks first, so that customers outside the sample cost nothing)."""
        ...

    def observe_customer(self, observation: CustomerObservation) -> None:
        """A sampled customer after an event: the population the BTYD model is fitted to."""
        ...

    def take(self) -> list[Output]:
        """The records to publish with this batch's outputs (the runtime asks once per
        batch, after the scorer's work): the calls made since the last ``take``."""
        ...

    def delivered(self) -> None:
        """The batch's outputs, those records included, are flushed (before its states are
        saved): an in-process trainer learns them now."""
        ...


class Lineage(Protocol):
    """What the scorer reads of the learnt lineage: only to predict and to segment."""

    models: Models
    rfm: RfmScorer


class ServedLineage:
    """The published model version a scorer predicts with (a ``Lineage``), and what the
    trainer said of it: its version, who published it and when, and its quality figures.

    Before any version is published (or when none can be read) it holds fresh models, which
    predict with the buy-till-you-die prior; the follower (``model_checkpoints.py``) swaps in
    every newer version between batches.
    """

    def __init__(self, models: Models, rfm: RfmScorer) -> None:
        self.models = models
        self.rfm = rfm
        self.version = 0
        self.writer = ""
        self.created_unix = 0.0  # when the trainer published it; 0: nothing published yet
        self.summary: dict[str, object] = {}

    def replace(
        self,
        models: Models,
        rfm: RfmScorer,
        *,
        version: int,
        writer: str,
        created_unix: float,
        summary: dict[str, object],
    ) -> None:
        """Score with another version from now on."""
        self.models, self.rfm = models, rfm
        self.version, self.writer = version, writer
        self.created_unix, self.summary = created_unix, summary
