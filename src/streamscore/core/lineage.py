"""The seam between scoring and learning.

The scorer never learns: it predicts with a lineage's models and hands what the lineage
learns from to a ``Learner``. In one process the ``Trainer`` (``trainer.py``) is both, called
synchronously at the point where a label resolves, so an embedded run is deterministic.
DESIGN.md §4 asks for one lineage however many scorers share the group: the intended next
step is a ``Learner`` that produces each ``TrainingExample`` (and ``PopulationSample``) to a
``training-examples`` topic, consumed by a single trainer that checkpoints its ``Lineage``,
which every scorer then reads (restores) at a bounded staleness. Nothing else has to change:
the scorer calls only these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from streamscore.core.values import CustomerObservation, PopulationSample, TrainingExample

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


class Lineage(Protocol):
    """What the scorer reads of the learnt lineage: only to predict and to segment."""

    models: Models
    rfm: RfmScorer
