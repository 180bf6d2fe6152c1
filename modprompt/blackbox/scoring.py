"""Scoring candidate prompts on the frozen model: the one engine behind the server and in-process tuning.

A :class:`Scorer` holds a :class:`~modprompt.modular.model.ModularPromptModel` (backbone, bank, span
head), the example sets registered with it, the layer cache and the random projections of the
``random`` space. ``score`` turns each candidate into deep prompts (see :mod:`modprompt.blackbox.params`),
runs every chunk of the example set, and returns the mean span loss, the accuracy and, if asked, the
per-option scores, computed with the same head functions as :mod:`modprompt.evaluate`.

Example sets are split once, at registration, into fixed chunks of similar length (sorted by length,
cut where padding would cost more than another forward pass: :func:`length_chunks`), so a chunk's
padded batch is the same on every call and a cached block input is valid for it. Their id is a hash of
their content and of the encoding, so uploading the same examples again is free and gives the same id.

One lock serialises all model work: forward passes on a few CPU cores gain nothing from running side
by side, and the tokenizer and the block swap of the layer cache must not interleave. A second, short
lock guards the table of registered sets, so their sizes can be read while the model is busy. Scoring
holds the set it scores from start to end, so an upload that pushes the set out of the table meanwhile
changes nothing; examples given inline are registered and scored under one hold of the model lock.
Work checks a ``cancelled`` callable before every chunk (and while it waits for the model), so a
caller that gives up stops it within one chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from modprompt.blackbox.cache import CacheStats, LayerCache, LRUBytes, capture_output, start_at
from modprompt.blackbox.params import Candidate, CandidateResult, Limits, ModelInfo, ScoreReply, Space, example_to_dict
from modprompt.data.encoding import IGNORE_INDEX, EncodingConfig, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.head import option_scores, span_loss
from modprompt.hooks import hooked
from modprompt.metrics import accuracy
from modprompt.modular.model import ModularPromptModel
from modprompt.modular.router import route_weights

logger = logging.getLogger(__name__)

#: MP2's and BBT's search bound: every router logit and intrinsic number lies in [-5, 5]
DEFAULT_BOUND = 5.0
#: seconds between checks of ``cancelled`` while waiting for the model lock
_POLL_S = 0.05


#: what one more forward pass costs, in padded tokens, when :func:`length_chunks` weighs a cut: the per-pass work
#: that does not grow with its tokens (45-70 tokens' worth on Gemma 3 270M and 2 CPU cores; benchmarks/README.md,
#: "Black-box run time")
CHUNK_OVERHEAD_TOKENS = 64


def length_chunks(lengths: Sequence[int], max_rows: int, overhead: float) -> list[tuple[int, int]]:
    """Cut sorted ``lengths`` into consecutive chunks of at most ``max_rows``, least padded work first.

    A chunk is padded to its longest member, so it costs ``rows × longest`` tokens plus ``overhead``; the
    cuts minimise the total by dynamic programming (a long tail no longer pads a chunk of short examples).
    Returns ``(begin, end)`` index pairs.
    """
    if any(b < a for a, b in itertools.pairwise(lengths)):
        raise ValueError("length_chunks needs lengths sorted in increasing order")
    best = [0.0] + [math.inf] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for begin in range(max(0, end - max_rows), end):
            cost = best[begin] + lengths[end - 1] * (end - begin) + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    chunks = []
    end = len(lengths)
    while end:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


#: hidden-state values per layer that :meth:`Scorer.spread` reads at most (sampled evenly over a set's tokens)
SPREAD_MAX_VALUES = 2**18


def clipped_std(values: torch.Tensor, rounds: int = 5, width: float = 3.0) -> float:
    """BBTv2's spread of hidden states: their std after ``rounds`` rounds of clipping every value to the
    mean ± ``width`` std (``deepbbt.py``'s outlier clipping before it sizes its random projections).

    A residual stream with a few huge dimensions (Gemma 3's) has an RMS many times this.
    """
    x = values.double().flatten()
    mean, std = x.mean(), x.std(correction=0)
    for _ in range(rounds):
        x = x.clamp(mean - width * std, mean + width * std)
        mean, std = x.mean(), x.std(correction=0)
    return float(std)


class ParameterError(ValueError):
    """A request value that cannot be scored; ``field`` names it (``candidates.3.intrinsic.5``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownDataset(KeyError):
    def __init__(self, dataset: str) -> None:
        super().__init__(dataset)
        self.dataset = dataset

    def __str__(self) -> str:
        return f"unknown dataset {self.dataset!r}; upload its examples again (POST /v1/datasets)"


class Busy(RuntimeError):
    """The model stayed busy with other requests for the whole time this one could wait."""


class DeadlineExceeded(TimeoutError):
    """A request ran past its time limit (what it computed so far stays in the layer cache)."""


class Cancelled(RuntimeError):
    """The caller gave up (``cancelled()`` turned true); the work stopped before its next chunk."""


def check_text(text: str, field: str) -> None:
    """Raise :class:`ParameterError` naming ``field`` unless ``text`` is valid Unicode.

    JSON can carry a lone surrogate (``"\\ud800"``) that no UTF-8 encoder or tokenizer accepts.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ParameterError(
            field, f"not valid Unicode: a lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
        ) from None


@dataclass
class _Chunk:
    rows: list[int]  # positions of its examples in the example set
    batch: dict
    tokens: int


@dataclass
class _Dataset:
    id: str
    chunks: list[_Chunk]
    size: int
    labelled: int
    tokens: int
    options: int  # over every example: the per-option scores one candidate gets

    def meta(self) -> dict:
        return {"id": self.id, "examples": self.size, "labelled": self.labelled, "tokens": self.tokens,
                "options": self.options, "chunks": len(self.chunks)}  # fmt: skip


class Scorer:
    """Loss, accuracy and option scores of candidate prompts on registered example sets."""

    def __init__(
        self,
        model: ModularPromptModel,
        *,
        max_length: int = 256,
        batch_size: int = 16,
        bound: float = DEFAULT_BOUND,
        cache_bytes: int = 512 * 2**20,
        projection_bytes: int = 512 * 2**20,
        max_random_dim: int = 1024,
        max_datasets: int = 64,
    ) -> None:
        self.model = model.eval()
        self.config = model.config
        self.device = next(model.parameters()).device  # the model stays where it was given
        config = EncodingConfig(max_length, model.config.num_tokens)
        self.encoder = MRCEncoder(model.backbone.tokenizer, config, self.device)
        self.batch_size = batch_size
        self.bound = bound
        self.max_random_dim = max_random_dim
        self.max_datasets = max_datasets
        self.cache = LayerCache(cache_bytes)
        self._projections = LRUBytes(projection_bytes)
        self._datasets: OrderedDict[str, _Dataset] = OrderedDict()
        self._lock = threading.Lock()  # model work
        self._table_lock = threading.Lock()  # self._datasets only; never held while waiting for the model

    @classmethod
    def from_bank(
        cls, bank: str | Path, backbone: str | Path | None = None, device: torch.device | str = "cpu", **options
    ) -> Scorer:
        """Load a saved bank (and its backbone: the recorded one by default, else ``backbone``) onto
        ``device`` (:func:`~modprompt.device.resolve_device`)."""
        from modprompt.backbone import check_backbone, resolve_backbone
        from modprompt.device import resolve_device
        from modprompt.modular.model import read_bank_config

        recorded = read_bank_config(bank)["backbone"]
        loaded = resolve_backbone(backbone, recorded)
        check_backbone(recorded, loaded, f"bank {bank}")
        return cls(ModularPromptModel.from_pretrained(bank, loaded).to(resolve_device(device)), **options)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def info(self, limits: Limits | None = None) -> ModelInfo:
        c = self.config
        return ModelInfo(
            backbone=self.model.backbone.info.to_dict(),
            num_layers=c.num_layers,
            hidden_size=c.hidden_size,
            num_modules=c.num_modules,
            num_tokens=c.num_tokens,
            rank=c.rank,
            bound=self.bound,
            max_random_dim=self.max_random_dim,
            max_length=self.encoder.config.max_length,
            limits=limits,
        )

    def stats(self) -> dict:
        with self._table_lock:
            datasets = len(self._datasets)
        return {"datasets": datasets, "cache_bytes": self.cache.bytes, **self.cache.stats.to_dict()}

    @contextmanager
    def _locked(self, timeout: float | None, cancelled: Callable[[], bool] | None = None):
        """Hold the model lock; :class:`Busy` after ``timeout`` s, :class:`Cancelled` once ``cancelled()``."""
        end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if cancelled is not None and cancelled():
                raise Cancelled("the caller gave up while waiting for the model")
            left = None if end is None else max(end - time.monotonic(), 0.0)
            wait = left if cancelled is None else min(_POLL_S, _POLL_S if left is None else left)
            if self._lock.acquire(timeout=-1 if wait is None else wait):
                break
            if end is not None and time.monotonic() >= end:
                raise Busy("the model is busy with other requests; try again")
        try:
            yield
        finally:
            self._lock.release()

    # -- example sets ---------------------------------------------------------------------------------

    def dataset_id(self, examples: Sequence[MRCExample]) -> str:
        """The id ``examples`` get when registered: a hash of their content and of the encoding.

        Raises :class:`ParameterError` naming the example that cannot be scored.
        """
        if not examples:
            raise ParameterError("examples", "give at least one example")
        for i, example in enumerate(examples):
            if not example.options:
                raise ParameterError(f"examples.{i}.options", "black-box scoring needs option examples")
            check_text(example.query, f"examples.{i}.query")
            check_text(example.passage, f"examples.{i}.passage")
            for j, option in enumerate(example.options):
                check_text(option, f"examples.{i}.options.{j}")
        content = [example_to_dict(e) for e in examples]
        key = json.dumps([content, self.encoder.config.max_length, self.batch_size], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def add_dataset(
        self, examples: Sequence[MRCExample], lock_timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict:  # fmt: skip
        """Register option examples (encoded and chunked once); returns their id and sizes."""
        dataset_id = self.dataset_id(examples)
        with self._locked(lock_timeout, cancelled):
            return self._register(dataset_id, examples).meta()

    def _register(self, dataset_id: str, examples: Sequence[MRCExample]) -> _Dataset:
        """The registered set ``dataset_id``, encoding ``examples`` first if needed (model lock held)."""
        with self._table_lock:
            dataset = self._datasets.get(dataset_id)
            if dataset is not None:
                self._datasets.move_to_end(dataset_id)
                return dataset
        encoded = self._encode(examples)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        lengths = [len(encoded[i].input_ids) for i in order]
        chunks = []
        for begin, end in length_chunks(lengths, self.batch_size, CHUNK_OVERHEAD_TOKENS):
            rows = order[begin:end]
            batch = self.encoder.collate([encoded[i] for i in rows])
            chunks.append(_Chunk(rows, batch, int(batch["attention_mask"].sum())))
        labelled = sum(e.label is not None for e in examples)
        options = sum(len(e.options) for e in examples)
        dataset = _Dataset(dataset_id, chunks, len(examples), labelled, sum(c.tokens for c in chunks), options)
        with self._table_lock:
            self._datasets[dataset_id] = dataset
            while len(self._datasets) > self.max_datasets:
                dropped, _ = self._datasets.popitem(last=False)
                logger.info("dropped example set %s (more than %d kept)", dropped, self.max_datasets)
        return dataset

    def _encode(self, examples: Sequence[MRCExample]):
        try:
            return self.encoder.encode_all(examples)
        except ValueError:
            for i, example in enumerate(examples):  # find the example to name
                try:
                    self.encoder.encode(example)
                except ValueError as err:
                    raise ParameterError(f"examples.{i}", str(err).removeprefix(f"{example.source}: ")) from None
            raise

    def dataset(self, dataset_id: str) -> dict:
        """The sizes of a registered set (:class:`UnknownDataset` if it is not held)."""
        with self._table_lock:
            dataset = self._datasets.get(dataset_id)
        if dataset is None:
            raise UnknownDataset(dataset_id)
        return dataset.meta()

    @torch.no_grad()
    def spread(
        self, dataset_id: str, lock_timeout: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> dict:
        """The spread (:func:`clipped_std`) of the hidden states entering each block on a registered set,
        with no prompt: what BBTv2 sizes its random projections by, measured on its training inputs.

        Every real token of the set counts (the prompt positions too, as in BBTv2), at most
        :data:`SPREAD_MAX_VALUES` values per layer, drawn evenly over the chunks with a fixed seed.
        Returns ``{"dataset", "spread": [one per layer], "tokens"}``.
        """
        with self._locked(lock_timeout, cancelled):
            with self._table_lock:
                entry = self._datasets.get(dataset_id)
            if entry is None:
                raise UnknownDataset(dataset_id)
            generator = torch.Generator().manual_seed(0)
            values: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]
            mask, quota = None, 0

            def recorder(layer: int):
                def record(module, args, kwargs):
                    hidden = (args[0] if args else kwargs["hidden_states"])[mask].flatten()
                    if hidden.numel() > quota:
                        hidden = hidden[torch.randint(hidden.numel(), (quota,), generator=generator).to(hidden.device)]
                    values[layer].append(hidden.float().cpu())

                return record

            blocks = self.model.backbone.blocks
            with hooked(((block, recorder(layer)) for layer, block in enumerate(blocks)), pre=True):
                for index, chunk in enumerate(entry.chunks):
                    if cancelled is not None and cancelled():
                        raise Cancelled(f"the caller gave up after {index} of {len(entry.chunks)} chunks")
                    mask = chunk.batch["attention_mask"].bool()
                    quota = math.ceil(SPREAD_MAX_VALUES * chunk.tokens / entry.tokens)
                    self.model.backbone(chunk.batch["input_ids"], chunk.batch["attention_mask"])
        return {"dataset": dataset_id, "spread": [clipped_std(torch.cat(v)) for v in values], "tokens": entry.tokens}

    # -- candidates -----------------------------------------------------------------------------------

    def check(self, candidate: Candidate, space: Space, field: str) -> None:
        """Raise :class:`ParameterError` naming the field if ``candidate`` cannot be read in ``space``."""
        c = self.config
        if space.kind == "random":
            if candidate.router is not None:
                raise ParameterError(f"{field}.router", "the random space has no router")
            size = space.dim
        else:
            size = c.intrinsic_size
            if candidate.router is not None:
                router = self._numbers(candidate.router, f"{field}.router")
                if tuple(router.shape) not in ((c.num_modules,), (c.num_layers, c.num_modules)):
                    expected = f"{c.num_modules} logits (shared) or {c.num_layers} lists of {c.num_modules} (per layer)"
                    raise ParameterError(f"{field}.router", f"expected {expected}")
        for layer, values in candidate.intrinsic.items():
            where = f"{field}.intrinsic.{layer}"
            if not 0 <= layer < c.num_layers:
                raise ParameterError(where, f"no such layer; the model has layers 0..{c.num_layers - 1}")
            vector = self._numbers(values, where)
            if tuple(vector.shape) != (size,):
                raise ParameterError(where, f"expected {size} numbers, got shape {tuple(vector.shape)}")

    def check_space(self, space: Space) -> None:
        if space.kind not in ("bank", "random"):
            raise ParameterError("space.kind", f"unknown space {space.kind!r}; expected 'bank' or 'random'")
        if space.kind == "random":
            if not 1 <= space.dim <= self.max_random_dim:
                raise ParameterError("space.dim", f"must lie in 1..{self.max_random_dim}")
            if not 0 <= space.seed < 2**32:
                raise ParameterError("space.seed", "must lie in 0..2**32-1")
            if space.scale is not None and (
                len(space.scale) != self.num_layers or not all(0 < s < math.inf for s in space.scale)
            ):
                raise ParameterError("space.scale", f"expected {self.num_layers} positive finite numbers, one per layer")

    def _numbers(self, values, field: str) -> torch.Tensor:
        try:
            tensor = torch.tensor(values, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ParameterError(field, "expected a list of numbers") from None
        if not torch.isfinite(tensor).all():
            raise ParameterError(field, "values must be finite")
        if tensor.numel() and tensor.abs().max() > self.bound:
            raise ParameterError(field, f"values must lie in [-{self.bound:g}, {self.bound:g}]")
        return tensor

    def _projection(self, space: Space, layer: int) -> torch.Tensor:
        """Layer ``layer``'s fixed random projection (dim, n × hidden) in the ``random`` space.

        Entries are normal with std ``s_l / sqrt(dim)``, ``s_l`` the space's ``scale[l]`` (else the bank's
        ``layer_scale``, the layer's hidden-state RMS), so a unit-variance ``z`` gives a prompt whose entries
        have std ``s_l``. Drawn on the CPU, so a seed names the same projection on every device (the scale
        only multiplies it), then kept on the model's.
        """
        scale = float(self.model.bank.layer_scale[layer]) if space.scale is None else space.scale[layer]
        key = (space.seed, space.dim, layer, scale)
        projection = self._projections.get(key)
        if projection is None:
            c = self.config
            generator = torch.Generator().manual_seed(space.seed * 1_000_003 + layer)
            std = scale / math.sqrt(space.dim)
            projection = torch.randn(space.dim, c.num_tokens * c.hidden_size, generator=generator) * std
            projection = projection.to(self.device)
            self._projections.put(key, projection, projection.numel() * projection.element_size())
        return projection

    def prompts(self, candidate: Candidate, space: Space = Space()) -> torch.Tensor:
        """The deep prompts (1, layers, n, hidden) that ``candidate`` stands for in ``space``."""
        self.check_space(space)
        self.check(candidate, space, "candidate")
        return self._prepare(candidate, space)[0]

    @torch.no_grad()
    def _prepare(self, candidate: Candidate, space: Space) -> tuple[torch.Tensor, list[bytes]]:
        """Deep prompts (1, layers, n, hidden) and prefix hashes: ``[l]`` identifies the prompts below ``l``."""
        c = self.config
        on = {"dtype": torch.float32, "device": self.device}
        specs: list[bytes] = []
        if space.kind == "random":
            prompts = torch.zeros(1, c.num_layers, c.num_tokens, c.hidden_size, **on)
            for layer in range(c.num_layers):
                if layer in candidate.intrinsic:
                    z = torch.tensor(candidate.intrinsic[layer], dtype=torch.float32)
                    prompts[0, layer] = (z.to(self.device) @ self._projection(space, layer)).view(c.num_tokens, -1)
                    scale = "" if space.scale is None else repr(space.scale[layer])
                    specs.append(f"random:{space.seed}:{space.dim}:{scale}:".encode() + z.numpy().tobytes())
                else:
                    specs.append(b"none")
        else:
            intrinsic = torch.zeros(c.num_layers, c.num_tokens, c.rank, **on)
            if candidate.router is not None:
                logits = torch.tensor(candidate.router, **on)
                if logits.dim() == 1:
                    logits = logits.expand(c.num_layers, -1)
                intrinsic = self.model.bank.mix(route_weights(logits)[None])[0]
            for layer, values in candidate.intrinsic.items():
                offset = torch.tensor(values, **on).view(c.num_tokens, c.rank)
                intrinsic[layer] = intrinsic[layer] + offset
            prompts = self.model.bank.project(intrinsic[None])
            specs = [b"bank:" + intrinsic[layer].cpu().numpy().tobytes() for layer in range(c.num_layers)]
        digest = hashlib.blake2b(digest_size=16)
        prefixes = [digest.digest()]
        for spec in specs:
            digest.update(len(spec).to_bytes(8, "little") + spec)
            prefixes.append(digest.digest())
        return prompts, prefixes

    def _store_layer(self, prefixes: list[list[bytes]], base: list[bytes] | None) -> int:
        """Where this request's shared states begin to differ: the block input worth caching (0: none).

        Candidates of one generation agree below the searched layer; a lone candidate is compared with
        the base it was laid over.
        """
        if len(prefixes) >= 2:
            reference, others = prefixes[0], prefixes[1:]
        elif base is not None:
            reference, others = base, prefixes
        else:
            return 0
        common = 0
        while common < len(reference) - 1 and all(p[common + 1] == reference[common + 1] for p in others):
            common += 1
        if common >= self.num_layers and len(prefixes) == 1:
            return 0
        return min(common, self.num_layers - 1)

    # -- scoring --------------------------------------------------------------------------------------

    def check_request(self, candidates: Sequence[Candidate], space: Space, base: Candidate | None) -> None:
        """Raise :class:`ParameterError` naming the field unless every candidate can be scored in ``space``."""
        if not candidates:
            raise ParameterError("candidates", "give at least one candidate")
        self.check_space(space)
        if base is not None:
            self.check(base, space, "base")
        for i, candidate in enumerate(candidates):
            self.check(candidate, space, f"candidates.{i}")

    @torch.no_grad()
    def score(
        self,
        dataset: str | Sequence[MRCExample],
        candidates: Sequence[Candidate],
        space: Space = Space(),
        base: Candidate | None = None,
        *,
        with_scores: bool = False,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ScoreReply:
        """Score every candidate (laid over ``base``) on an example set: a registered id, or examples,
        which are registered and scored under one hold of the model lock.

        ``deadline`` is a ``time.monotonic()`` instant: waiting for the model past it raises
        :class:`Busy`, computing past it :class:`DeadlineExceeded`. Once ``cancelled()`` is true the
        work stops before its next chunk with :class:`Cancelled`.
        """
        self.check_request(candidates, space, base)
        inline = not isinstance(dataset, str)
        dataset_id = self.dataset_id(dataset) if inline else dataset
        lock_timeout = None if deadline is None else deadline - time.monotonic()
        with self._locked(lock_timeout, cancelled):
            if inline:
                entry = self._register(dataset_id, dataset)
            else:
                with self._table_lock:
                    entry = self._datasets.get(dataset_id)
                    if entry is None:
                        raise UnknownDataset(dataset_id)
                    self._datasets.move_to_end(dataset_id)
            before = CacheStats(**self.cache.stats.to_dict())
            prepared = [self._prepare(c.over(base), space) for c in candidates]
            base_prefixes = self._prepare(base, space)[1] if base is not None else None
            store = self._store_layer([p for _, p in prepared], base_prefixes) if self.cache.enabled else 0
            results = [self._score_one(entry, prompts, prefixes, store, with_scores, deadline, cancelled)
                       for prompts, prefixes in prepared]  # fmt: skip
            after = self.cache.stats.to_dict()
        delta = {k: after[k] - v for k, v in before.to_dict().items()}
        return ScoreReply(results, entry.size, entry.labelled, entry.tokens * len(candidates), delta)

    def _score_one(
        self, dataset: _Dataset, prompts: torch.Tensor, prefixes: list[bytes], store: int, with_scores: bool,
        deadline: float | None, cancelled: Callable[[], bool] | None,
    ) -> CandidateResult:  # fmt: skip
        blocks = self.model.backbone.blocks
        loss_sum = 0.0
        predictions: list[int] = []
        labels: list[int] = []
        scores: list[list[float] | None] = [None] * dataset.size
        for index, chunk in enumerate(dataset.chunks):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the request ran past its time limit; send fewer candidates or examples")
            if cancelled is not None and cancelled():
                raise Cancelled(f"the caller gave up after {index} of {len(dataset.chunks)} chunks")
            start, output = 0, None
            if self.cache.enabled:
                start, output = self.cache.lookup(dataset.id, index, prefixes, self.num_layers - 1)
            captured: list = []
            keep = store > start
            batch = chunk.batch
            capture = capture_output(blocks[store - 1], captured) if keep else nullcontext()
            with start_at(blocks, start, output), capture:
                start_logits, end_logits = self.model.forward_with_prompts(
                    batch, prompts.expand(len(chunk.rows), -1, -1, -1)
                )
            self.cache.stats.blocks_skipped += start
            self.cache.stats.blocks_run += self.num_layers - start
            if keep:
                self.cache.store(dataset.id, index, store, prefixes[store], captured[0])
            labelled = batch["labels"] != IGNORE_INDEX
            losses = span_loss(start_logits, end_logits, batch, reduction="none")
            chunk_scores = option_scores(start_logits, end_logits, batch)
            loss_sum += float(losses[labelled].double().sum())
            predictions += chunk_scores[labelled].argmax(-1).tolist()
            labels += batch["labels"][labelled].tolist()
            if with_scores:
                counts = batch["option_mask"].sum(-1).tolist()
                for row, (position, count) in enumerate(zip(chunk.rows, counts)):
                    scores[position] = chunk_scores[row, :count].tolist()
        n = len(labels)
        return CandidateResult(
            loss=loss_sum / n if n else None,
            accuracy=accuracy(predictions, labels) if n else None,
            scores=scores if with_scores else None,  # type: ignore[arg-type]
        )
