"""Settings of one black-box tuning run (``modprompt bbt``): the method, its budgets and its search.

Each field's help sits beside it (``metadata["help"]``); ``modprompt bbt`` generates its flags from it
(:mod:`modprompt.config_flags`). The defaults (``--preset mp2``) are those of MP2's black-box script; where
it deliberately differs, :mod:`modprompt.blackbox.tune` says so and why.

``PRESETS["cpu"]`` is sized for a 2-core CPU and Gemma 3 270M: a shared router (8 logits: 20 evaluations
cannot model 144), 20 router evaluations (5 random), 360 prompt evaluations at population 10 (two rounds
over 18 layers). That is 12% of MP2's budget and 4.5% of the 8,000 calls BBT and BBTv2 report
(``PAPER_BUDGETS``): every method gets the same budget, and none gets its own.

Nothing here imports numpy or torch, so the command's parser is built at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from modprompt.config_flags import flag_help
from modprompt.config_utils import config_from_dict

METHODS = ("mp2-bb", "bbt", "bbtv2")
PRESETS: dict[str, dict] = {
    "mp2": {},  # the TuneConfig defaults are MP2's script's
    "cpu": {"router": "shared", "router_evaluations": 20, "router_initial_points": 5, "prompt_evaluations": 360,
            "popsize": 10},  # fmt: skip
}

#: The budget (train-set evaluations) at which each method's own work reports its results, and where it is set.
PAPER_BUDGETS: dict[str, dict] = {
    "mp2-bb": {"router": 100, "prompt": 3000,
               "source": "MP2's black-box script (Hzfinfdu/MPMP Deep/deepbbt.py: --budget_router 100, "
                         "--budget_prompt 3000)"},
    "bbt": {"router": 0, "prompt": 8000,
            "source": "BBT's script (txsun1997/Black-Box-Tuning bbt.py: --budget 8000)"},
    "bbtv2": {"router": 0, "prompt": 8000,
              "source": "BBTv2's script (txsun1997/Black-Box-Tuning deepbbt.py: --budget 8000)"},
}  # fmt: skip

#: What the fields added when mp2-bb was made to follow MP2's script meant before, for configs saved without
#: them (stored results and run states of then): the router with the lowest train loss, scikit-optimize's
#: default acquisition, one σ at every layer, the bound on the offset from the routed mix.
_BEFORE_MP2_FIDELITY = {"router_kappa": None, "router_dev_every": None, "sigma_first": "same", "bound_on": "offset"}


@dataclass
class TuneConfig:
    method: str = field(metadata=flag_help("the black-box method: " + ", ".join(METHODS)))
    seed: int = field(default=0, metadata=flag_help("few-shot split (FewCLUE: 0..4) and optimiser seed"))
    k_per_label: int = field(
        default=16,
        metadata=flag_help("examples per label for train and for dev, for tasks without official few-shot files"),
    )
    router: str = field(
        default="per_layer",
        metadata=flag_help(
            "mp2-bb stage 1: one router per layer (layers × K logits, MP2's deep black-box script) or K logits "
            "shared by every layer (MP2's shallow script's 8 numbers, spread over every layer here)",
            choices=("per_layer", "shared"),
        ),
    )
    router_evaluations: int = field(default=100, metadata=flag_help("mp2-bb stage 1 budget (MP2: 100)"))
    router_initial_points: int = field(
        default=20, metadata=flag_help("random router points before the GP proposes (MP2: 20)")
    )
    router_kappa: float | None = field(
        default=2.0,
        metadata=flag_help(
            "κ of the GP's acquisition: it proposes the router of the lowest mean − κ·std of the train loss "
            "(MP2: UCB with κ = 2; none: scikit-optimize's own acquisition, modprompt's before it followed MP2)"
        ),
    )
    router_dev_every: int | None = field(
        default=10,
        metadata=flag_help(
            "score the router of every N-th evaluation on dev and keep the dev-best (MP2: 10; none: keep the "
            "router of the lowest train loss, modprompt's rule before it followed MP2)"
        ),
    )
    router_batch: int = field(
        default=1,
        metadata=flag_help("router candidates per call (skopt's constant-liar batch); 1 is plain sequential BO"),
    )
    prompt_evaluations: int = field(
        default=3000,
        metadata=flag_help("CMA-ES budget in candidates, spent in whole rounds over the searched layers (MP2: 3000)"),
    )
    popsize: int = field(default=20, metadata=flag_help("CMA-ES population (MP2: 20)"))
    sigma: float | None = field(
        default=None,
        metadata=flag_help(
            "CMA-ES step size at every searched layer but the first (default: 0.1 for mp2-bb, MP2's sigma2; "
            "0.5 for bbt/bbtv2, BBTv2's)"
        ),
    )
    sigma_first: float | str | None = field(
        default=None,
        metadata=flag_help(
            "the first searched layer's step size (default: 0.5 for mp2-bb, MP2's sigma1; sigma for bbt/bbtv2); "
            "'same' in a saved config: sigma, as configs saved before this field read",
            type=float,
        ),
    )
    bound: float = field(default=5.0, metadata=flag_help("search bound of every router logit and searched number"))
    bound_on: str = field(
        default="intrinsic",
        metadata=flag_help(
            "mp2-bb stage 2: bound each layer's intrinsic vector itself (MP2) or the offset from the routed mix "
            "(modprompt's before; needs no --bank-copy with --server)",
            choices=("intrinsic", "offset"),
        ),
    )
    dim: int | None = field(
        default=None,
        metadata=flag_help(
            "bbt/bbtv2 numbers per layer (default: the model's intrinsic size n × r, MP2's stage-2 size)"
        ),
    )
    dev_every: int | None = field(
        default=5,
        metadata=flag_help(
            "generations between stage-2 dev evaluations (MP2: every 100 evaluations, 5 generations at "
            "population 20; none: one round over the searched layers)"
        ),
    )
    test_limit: int | None = field(
        default=None, metadata=flag_help("score only the first N of a fixed shuffle of the test set (a CPU budget cap)")
    )
    dev_limit: int | None = field(
        default=None,
        metadata=flag_help("select on only the first N of a fixed shuffle of the dev set (a CPU budget cap)"),
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown black-box method {self.method!r}; expected one of {METHODS}")
        if self.router not in ("shared", "per_layer"):
            raise ValueError(f"router must be 'shared' or 'per_layer', not {self.router!r}")
        if self.bound_on not in ("intrinsic", "offset"):
            raise ValueError(f"bound_on must be 'intrinsic' or 'offset', not {self.bound_on!r}")
        for name in ("router_initial_points", "router_batch", "popsize"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("router_evaluations", "prompt_evaluations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("router_dev_every", "dev_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)}")
        if self.sigma_first != "same" and self.sigma_first is not None and not self.sigma_first > 0:
            raise ValueError(f"sigma_first must be positive, 'same' or None, got {self.sigma_first!r}")
        if self.bound <= 0 or (self.sigma is not None and self.sigma <= 0):
            raise ValueError("bound and sigma must be positive")
        if self.router_kappa is not None and self.router_kappa < 0:
            raise ValueError(f"router_kappa must not be negative, got {self.router_kappa}")

    @classmethod
    def preset(cls, name: str, method: str, seed: int = 0, **overrides) -> TuneConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(method, seed, **{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def step_sizes(self) -> tuple[float, float]:
        """CMA-ES σ at the first searched layer and at the others."""
        rest = self.sigma if self.sigma is not None else (0.1 if self.method == "mp2-bb" else 0.5)
        if self.sigma_first == "same":
            return rest, rest
        if self.sigma_first is not None:
            return float(self.sigma_first), rest
        return (0.5 if self.method == "mp2-bb" else rest), rest

    @property
    def searches_intrinsic(self) -> bool:
        """mp2-bb stage 2 sends each layer's (bounded) intrinsic vector, not an offset from the routed mix."""
        return self.method == "mp2-bb" and self.bound_on == "intrinsic"

    def generations(self, layers: int) -> int:
        """CMA-ES generations: whole rounds over ``layers`` searched layers, as MP2's and BBTv2's scripts
        spend ``budget // (popsize × layers)`` rounds (a remainder is left unspent)."""
        return self.prompt_evaluations // (self.popsize * layers) * layers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TuneConfig:
        """A saved config; one saved before a field existed reads it as what the code of then did."""
        return config_from_dict(cls, {**_BEFORE_MP2_FIDELITY, **data}, "black-box")
