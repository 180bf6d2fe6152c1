"""The one objective interface the black-box optimisers see: candidates in, losses and scores out.

An :class:`Objective` uploads example sets and evaluates populations of candidates on them. Two
implementations share everything but the transport: :class:`InProcessObjective` calls a
:class:`~modprompt.blackbox.scoring.Scorer` in this process, :class:`RemoteObjective` a served model
through :class:`~modprompt.blackbox.client.Client`. Both split work to fit the model's limits
(examples per set, candidates per call) and merge the replies, so an optimiser's results do not
depend on where the model runs. Neither imports torch until a scorer is built.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from modprompt.blackbox.params import (
    Candidate,
    CandidateResult,
    ModelInfo,
    ScoreReply,
    Space,
    example_to_dict,
    merge_results,
)
from modprompt.data.mrc import MRCExample

logger = logging.getLogger(__name__)


@dataclass
class ExampleSet:
    """An uploaded example set: the ids of its consecutive parts (one unless it exceeded the limits)."""

    parts: list[str]
    size: int


@dataclass
class Usage:
    """What an objective has cost so far."""

    calls: int = 0  # requests to the model: scores, and the one spread of a BBT / BBTv2 run
    evaluations: int = 0  # candidates scored, each on one example set
    examples: int = 0  # examples forwarded, over every candidate
    tokens: int = 0  # input tokens forwarded, over every candidate
    seconds: float = 0.0  # wall time spent waiting for scores
    cache: dict = field(default_factory=dict)  # layer-cache counters summed over replies

    def to_dict(self) -> dict:
        return asdict(self)


class Objective(ABC):
    """Uploads example sets and evaluates candidate prompts on them (see the module docstring)."""

    def __init__(self) -> None:
        self.usage = Usage()
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            self._info = self._fetch_info()
        return self._info

    def upload(self, examples: Sequence[MRCExample]) -> ExampleSet:
        """Register ``examples`` (in parts of at most the model's ``max_examples``)."""
        if not examples:
            raise ValueError("no examples to upload")
        limit = self.info.limits.max_examples if self.info.limits else max(len(examples), 1)
        parts = [self._upload(examples[i : i + limit]) for i in range(0, len(examples), limit)]
        return ExampleSet(parts, len(examples))

    def evaluate(
        self,
        examples: ExampleSet,
        candidates: Sequence[Candidate],
        space: Space = Space(),
        base: Candidate | None = None,
        with_scores: bool = False,
    ) -> list[CandidateResult]:
        """Each candidate (laid over ``base``) on the whole example set, in as many calls as the limits need."""
        limit = self.info.limits.max_candidates if self.info.limits else max(len(candidates), 1)
        results: list[CandidateResult] = []
        for i in range(0, len(candidates), limit):
            group = list(candidates[i : i + limit])
            replies = []
            for part in examples.parts:
                started = time.perf_counter()
                reply = self._score(part, group, space, base, with_scores)
                self.usage.seconds += time.perf_counter() - started
                self.usage.calls += 1
                self.usage.examples += reply.examples * len(group)
                self.usage.tokens += reply.tokens
                for key, value in reply.cache.items():
                    self.usage.cache[key] = self.usage.cache.get(key, 0) + value
                replies.append(reply)
            results += merge_results(replies)
        self.usage.evaluations += len(candidates)
        return results

    def spread(self, examples: ExampleSet) -> list[float]:
        """The spread of the hidden states entering each layer on ``examples`` with no prompt (BBTv2's
        measure, :meth:`~modprompt.blackbox.scoring.Scorer.spread`), read on its first part."""
        started = time.perf_counter()
        reply = self._spread(examples.parts[0])
        self.usage.seconds += time.perf_counter() - started
        self.usage.calls += 1
        self.usage.tokens += reply["tokens"]  # one forward pass over the part
        return reply["spread"]

    @abstractmethod
    def _fetch_info(self) -> ModelInfo: ...

    @abstractmethod
    def _upload(self, examples: Sequence[MRCExample]) -> str: ...

    @abstractmethod
    def _score(
        self, part: str, candidates: list[Candidate], space: Space, base: Candidate | None, with_scores: bool
    ) -> ScoreReply: ...

    @abstractmethod
    def _spread(self, part: str) -> dict: ...


class InProcessObjective(Objective):
    """Scores with a :class:`~modprompt.blackbox.scoring.Scorer` in this process: no limits, no HTTP."""

    def __init__(self, scorer) -> None:
        super().__init__()
        self.scorer = scorer

    def _fetch_info(self) -> ModelInfo:
        return self.scorer.info()

    def _upload(self, examples: Sequence[MRCExample]) -> str:
        return self.scorer.add_dataset(examples)["id"]

    def _score(self, part, candidates, space, base, with_scores) -> ScoreReply:
        return self.scorer.score(part, candidates, space, base, with_scores=with_scores)

    def _spread(self, part: str) -> dict:
        return self.scorer.spread(part)


class RemoteObjective(Objective):
    """Scores with a served model; an example set the server has forgotten (restart) is uploaded again."""

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client
        self._examples: dict[str, list[dict]] = {}

    def _fetch_info(self) -> ModelInfo:
        return ModelInfo.from_dict(self.client.info())

    def _upload(self, examples: Sequence[MRCExample]) -> str:
        payload = [example_to_dict(e) for e in examples]
        dataset_id = self.client.upload(payload)["id"]
        self._examples[dataset_id] = payload
        return dataset_id

    def _score(self, part, candidates, space, base, with_scores) -> ScoreReply:
        body = {
            "dataset": part,
            "space": space.to_dict(),
            "candidates": [c.to_dict() for c in candidates],
            "with_scores": with_scores,
        }
        if base is not None:
            body["base"] = base.to_dict()
        return ScoreReply.from_dict(self._on(part, lambda: self.client.score(body)))

    def _spread(self, part: str) -> dict:
        return self._on(part, lambda: self.client.spread(part))

    def _on(self, part: str, call):
        """``call()``, once more after uploading ``part`` again if the server has forgotten it."""
        from modprompt.blackbox.client import ServerError

        try:
            return call()
        except ServerError as err:
            if err.status != 404 or part not in self._examples:
                raise
            logger.warning("the server no longer holds example set %s; uploading it again", part)
            if self.client.upload(self._examples[part])["id"] != part:
                raise RuntimeError("the server gives the re-uploaded example set another id") from err
            return call()
