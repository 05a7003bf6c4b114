"""The training configuration (a frozen dataclass stored in every checkpoint) and paper presets.

Precedence: library defaults < ``--preset`` < explicit flags. Defaults follow [C22 §5, App. C]
(CIFAR: SGD lr 0.01, batch 64, weight decay 4e-4, no client momentum, E = 1, 5 clients per
round; SWA from 75% of the rounds with gamma1 = 1e-2, gamma2 = 1e-4) and [L26] for FedNSAM
(gamma = 0.85, rho = 0.05). ``rho`` defaults per algorithm: SAM 0.05, ASAM 0.5 (CIFAR-100,
[C22 Table 11]), FedNSAM 0.05 [L26].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from landscape.errors import LandscapeError
from landscape.train.hyperparameters import (ALGORITHMS, ASAM_VARIANTS, DEFAULT_ETA, DEFAULT_GAMMA, DEFAULT_RHO,
                                             PERTURBATIONS)

DTYPES = ("float32", "float64")
LR_SCHEDULES = ("constant", "cosine")
COHORT_SAMPLINGS = ("seeded", "fedsam")
CLIENT_WEIGHTS = ("samples", "uniform")
#: The Dirichlet schemes, ``landscape.partition.SCHEMES`` (named here so the CLI parser needs no
#: torch; tests/test_dirichlet.py checks the two agree).
PARTITIONS = ("h19", "fednsam", "legacy")
#: Fields added after runs were first stored, with the value a stored config without the field
#: was made by: a run resumed from such a config keeps its partition.
STORED_BEFORE = {"partition": "legacy"}


def option(help: str, default: Any = dataclasses.MISSING, *, default_text: str | None = None,
           default_factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help text; the flag's help says its default (written once, here).

    ``default_text`` words a default the value alone does not explain (None meaning "by data set").
    """
    metadata = {"help": help, "default_text": default_text}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def help_of(name: str) -> str:
    """The ``--help`` text of a config field: its help and its default.

    >>> help_of("lr"), help_of("swa")
    ('client learning rate (default: 0.01)', 'server-side SWA with the cyclic client learning rate [C22] (default: off)')
    """
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    text = f.metadata.get("default_text")
    if text is None and f.default is not dataclasses.MISSING and f.default is not None:
        text = ("on" if f.default else "off") if isinstance(f.default, bool) else f"{f.default:g}" \
            if isinstance(f.default, float) else str(f.default)
    return f.metadata["help"] + (f" (default: {text})" if text is not None else "")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (device and engine do not).

    Attributes (paper symbols where they exist):
        algorithm: fedavg | fedavgm | fedsam | fedasam | fednsam.
        dataset: a data spec for :func:`landscape.data.load` (``cifar100``, ``digits``,
            ``synthetic:n=512,classes=10,shape=3x8x8``); the test split is used for evaluation.
        model, model_kwargs: architecture for :func:`landscape.models.build` (``num_classes`` and,
            for ``mlp``, ``in_features`` are filled in from the data); None: the model that fits
            the data (:func:`landscape.models.default_for`: the CNN on CIFAR, the MLP on digits).
        num_clients, samples_per_client: the federation (None: 100 x 500 on CIFAR [C22], 20 x 65 on
            digits, 10 clients sharing the data otherwise).
        alpha: total Dirichlet concentration [H19] (0: one class per client; large: iid).
        partition: the Dirichlet scheme (:func:`landscape.partition.partition`): ``h19`` as the
            published [C22] splits were generated, ``fednsam`` as the FedNSAM code [L26] (images
            reused), ``legacy`` the rule of runs stored before the option existed.
        split_file: a published split (overrides alpha), in any format of :mod:`landscape.splits`.
        clients_per_round: C, sampled uniformly without replacement each round.
        cohort_sampling: ``seeded`` (from (seed, round)) or ``fedsam`` (``np.random.seed(round)``
            then ``np.random.choice``, fedsam's code; the same cohorts for every seed).
        client_weights: aggregation weight of client k: ``samples`` (n_k [C22]) or ``uniform``
            (1 per client, the FedNSAM code).
        num_rounds: T.
        lr, batch_size, local_epochs, weight_decay, client_momentum: the client SGD [C22 App. C].
        lr_schedule: the client lr over rounds: ``constant`` or ``cosine``
            (``lr_t = lr (1 + cos(pi t / T)) / 2``, 0-based t, the FedNSAM code); SWA overrides it.
        max_grad_norm: clip each client gradient to this L2 norm before the step (0: off; 10 in
            the FedNSAM code, as ``torch.nn.utils.clip_grad_norm_``).
        augment: random crop (padding 4) + horizontal flip on the device, for image data.
        rho, eta: SAM/ASAM neighbourhood and ASAM offset [C22 eq. 4, K21].
        asam_variant: ``kwon`` (T = |w| + eta on weights, 1 on biases) or ``davda54``.
        bn_first_pass_only: update BatchNorm statistics only in SAM's first forward pass.
        server_lr, server_momentum: FedAvgM server SGD (eta_s = 1, beta = 0.9 [C22]).
        gamma: FedNSAM server momentum / Nesterov extrapolation [L26].
        perturbation: FedNSAM perturbation, ``global_momentum`` (-rho m/||m||) or ``local_sam``.
        fednsam_reference_momentum: the reference code's server recursion m_1 = Delta_1,
            m_r = (1 + gamma) Delta_r, x_r = x_{r-1} + m_r (a defect).
        fednsam_extrapolate_buffers: extrapolate normalization buffers like parameters (reference).
        swa: server-side SWA with the cyclic client learning rate [C22 §4].
        swa_start: fraction of the rounds after which SWA starts (0.75).
        swa_gamma1, swa_gamma2, swa_cycle: the cycle's highest/lowest lr and its length c.
        swa_collect_early: collect right after the highest-lr round, as fedsam's code does.
        swa_c1_keeps_lr: with c = 1, keep the client lr (fedsam's code cycles only when c > 1);
            otherwise c = 1 is [C22] eq. 8's constant gamma2.
        seed: derives the partition, the initial model, the cohorts and every client stream.
        eval_every, save_every, save_clients_every: test evaluation / global checkpoint / client
            checkpoint period in rounds (0: never; the last round is always evaluated and saved).
        track_every, track_samples: curvature tracking period in rounds (0: never) and the size of
            the global objective's subset of the pooled client data (:mod:`landscape.train.track`).
        dtype: float32 or float64 weights; bf16: bfloat16 autocast for the forward passes.
    """

    algorithm: str = option('fedavg, fedavgm, fedsam, fedasam or fednsam', 'fedavg')
    dataset: str = option(
        'training data: cifar10, cifar100, digits, synthetic[:n=..,classes=..,shape=3x32x32] or a '
        '.npz/.pt file with x and y', 'cifar100')
    model: str | None = option(
        'architecture from `landscape models` or package.module:factory', None,
        default_text='one that fits the data: cnn for 32x32 images such as CIFAR, mlp otherwise, e.g. digits')
    model_kwargs: dict[str, Any] = option(
        'JSON keyword arguments for the model; num_classes etc. are filled in from the data', default_factory=dict)
    num_clients: int | None = option('number of clients K', None, default_text='100 on CIFAR, 20 on digits')
    samples_per_client: int | None = option(
        'training samples per client', None, default_text='500 on CIFAR, 65 on digits')
    alpha: float = option(
        'total Dirichlet concentration [H19] (alpha/C per class): 0 = one class per client, large = iid', 0.0)
    partition: str = option(
        'Dirichlet scheme: h19 (as the published [C22] splits were generated), fednsam (the FedNSAM code: '
        'labels sampled, images reused when a class runs out) or legacy (runs from before this option)', 'h19')
    split_file: str | None = option(
        "a published split (replaces --alpha), told apart by content: fedsam's JSON {users, num_samples, user_data} "
        "naming CIFAR images by their filenames, a JSON {client: [image indices]} (e.g. from Flower's "
        "partitioners) or a CSV with rows user_id,image_id,class", None)
    clients_per_round: int = option('clients sampled per round', 5)
    cohort_sampling: str = option(
        "seeded (from --seed and the round) or fedsam (np.random.seed(round), fedsam's code; ignores --seed)",
        'seeded')
    client_weights: str = option(
        'aggregation weight of a client: samples (its n_k [C22]) or uniform (the FedNSAM code)', 'samples')
    num_rounds: int = option('communication rounds T', 20000)
    lr: float = option('client learning rate', 0.01)
    batch_size: int = option('client batch size', 64)
    local_epochs: int = option('local epochs E per round', 1)
    weight_decay: float = option('client weight decay', 0.0004)
    client_momentum: float = option('client SGD momentum, reset every round', 0.0)
    lr_schedule: str = option(
        'client lr over rounds: constant or cosine (lr (1 + cos(pi t/T)) / 2, the FedNSAM code); SWA overrides it',
        'constant')
    max_grad_norm: float = option(
        'clip each client gradient to this L2 norm before the step (10 in the FedNSAM code)', 0.0,
        default_text='0 = off')
    augment: bool = option(
        'random crop (pad 4) + horizontal flip on the device, for images', False,
        default_text='off; on in the CIFAR presets')
    rho: float | None = option(
        'SAM/ASAM/FedNSAM neighbourhood size', None, default_text='0.05 SAM, 0.5 ASAM, 0.05 FedNSAM')
    eta: float = option('ASAM offset in T = |w| + eta', DEFAULT_ETA)
    asam_variant: str = option('kwon (T = |w| + eta on weights, 1 on biases) or davda54 (T = |w| everywhere)', 'kwon')
    bn_first_pass_only: bool = option("update BatchNorm statistics only in SAM's first forward pass", False)
    server_lr: float = option('FedAvgM server learning rate eta_s', 1.0)
    server_momentum: float = option('FedAvgM server momentum beta', 0.9)
    gamma: float = option('FedNSAM momentum / Nesterov extrapolation gamma', DEFAULT_GAMMA)
    perturbation: str = option('FedNSAM perturbation: global_momentum or local_sam', 'global_momentum')
    fednsam_reference_momentum: bool = option(
        "the FedNSAM reference code's server rule m_1 = Delta_1, m_r = (1+gamma) Delta_r, x_r = x_{r-1} + m_r "
        "(a known defect)", False)
    fednsam_extrapolate_buffers: bool = option(
        'extrapolate normalization buffers like weights (FedNSAM reference code)', False)
    swa: bool = option('server-side SWA with the cyclic client learning rate [C22]', False)
    swa_start: float = option('fraction of the rounds after which SWA starts', 0.75)
    swa_gamma1: float = option("SWA cycle's highest learning rate gamma1", 0.01)
    swa_gamma2: float = option("SWA cycle's lowest learning rate gamma2", 0.0001)
    swa_cycle: int = option('SWA cycle length c in rounds', 20, default_text='20; 10 on CIFAR-10')
    swa_collect_early: bool = option(
        "collect the SWA model right after the highest-lr round (fedsam code's behaviour)", False)
    swa_c1_keeps_lr: bool = option(
        "with --swa-cycle 1 keep the client lr, as fedsam's code does (else eq. 8's constant gamma2)", False)
    seed: int = option('seed of the partition, the initial model, the cohorts and all client streams', 0)
    eval_every: int = option('evaluate on the test set every K rounds', 100, default_text='100; always at the end')
    save_every: int = option(
        'save the global (and SWA) model every K rounds', 1000, default_text='1000; always at the end')
    save_clients_every: int = option(
        'save the local models of the sampled clients every K rounds', 0, default_text='0 = never')
    track_every: int = option(
        'every K rounds log lambda_max of the global and the local models and their flatness distance',
        0, default_text='0 = never')
    track_samples: int = option('samples of the pooled client data for the global lambda_max', 512)
    dtype: str = option('weights in float32 or float64', 'float32')
    bf16: bool = option('bfloat16 autocast for the forward passes', False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def effective_rho(self) -> float:
        """rho, or the algorithm's default when None (0 for algorithms without rho)."""
        return float(self.rho) if self.rho is not None else DEFAULT_RHO.get(self.algorithm, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in checkpoints and config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are an error."""
        if not isinstance(d, dict):
            raise LandscapeError(f"a training config must be a JSON object of options, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - names))
        if unknown:
            raise LandscapeError(f"unknown training options {unknown}; see `landscape train --help`")
        return cls(**d)

    @staticmethod
    def stored(d: Any) -> Any:
        """A config dict as stored by an earlier version, with :data:`STORED_BEFORE` filled in
        for the fields it predates (anything but a dict is returned as it is)."""
        return {**STORED_BEFORE, **d} if isinstance(d, dict) else d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: Flags whose name is not the field's in kebab case (the one place the CLI and the messages read).
FLAG_NAMES = {"num_rounds": "rounds"}


def flag(name: str) -> str:
    """The ``landscape train`` flag of a TrainConfig field.

    >>> flag("num_rounds"), flag("clients_per_round")
    ('--rounds', '--clients-per-round')
    """
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


@dataclass(frozen=True)
class Range:
    """The values a numeric field takes: ``low <= v <= high`` (``<`` where open), finite."""

    low: float
    high: float | None = None
    high_open: bool = False
    integer: bool = False
    optional: bool = False  # None allowed (filled in from the data or the algorithm)
    meaning: str = ""

    def describe(self) -> str:
        kind, fmt = ("an integer", "{:,}") if self.integer else ("a finite number", "{:g}")
        if self.high is None:
            return f"{kind} >= {fmt.format(self.low)}"
        return f"{kind} in [{fmt.format(self.low)}, {fmt.format(self.high)}{')' if self.high_open else ']'}"

    def admits(self, v: Any) -> bool:
        if self.optional and v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, (int, float) if not self.integer else int):
            return False
        if not math.isfinite(v) or v < self.low:
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)


SEED_MAX = 2**63 - 1
#: Every numeric field and its range ([C22], [L26] define them; momenta are < 1 so they decay).
RANGES: dict[str, Range] = {
    "num_clients": Range(1, integer=True, optional=True),
    "samples_per_client": Range(1, integer=True, optional=True),
    "alpha": Range(0, meaning="0: one class per client, large: iid"),
    "clients_per_round": Range(1, integer=True),
    "num_rounds": Range(1, integer=True),
    "lr": Range(0),
    "batch_size": Range(1, integer=True),
    "local_epochs": Range(1, integer=True),
    "weight_decay": Range(0),
    "max_grad_norm": Range(0, meaning="0: no clipping"),
    "client_momentum": Range(0, 1, high_open=True),
    "rho": Range(0, optional=True),
    "eta": Range(0),
    "server_lr": Range(0),
    "server_momentum": Range(0, 1, high_open=True),
    "gamma": Range(0, 1, high_open=True),
    "swa_start": Range(0, 1, meaning="a fraction of the rounds"),
    "swa_gamma1": Range(0),
    "swa_gamma2": Range(0),
    "swa_cycle": Range(1, integer=True),
    "seed": Range(0, SEED_MAX, integer=True),
    "eval_every": Range(0, integer=True, meaning="0: only at the end"),
    "save_every": Range(0, integer=True, meaning="0: only at the end"),
    "save_clients_every": Range(0, integer=True, meaning="0: never"),
    "track_every": Range(0, integer=True, meaning="0: never"),
    "track_samples": Range(1, integer=True),
}
#: The string fields and their choices (None: any string).
CHOICES: dict[str, tuple[str, ...] | None] = {
    "algorithm": ALGORITHMS, "dataset": None, "model": None, "asam_variant": ASAM_VARIANTS,
    "perturbation": PERTURBATIONS, "dtype": DTYPES, "lr_schedule": LR_SCHEDULES,
    "cohort_sampling": COHORT_SAMPLINGS, "client_weights": CLIENT_WEIGHTS, "partition": PARTITIONS,
}
BOOLS = ("augment", "bn_first_pass_only", "fednsam_reference_momentum", "fednsam_extrapolate_buffers", "swa",
         "swa_collect_early", "swa_c1_keeps_lr", "bf16")


def validate(cfg: TrainConfig) -> None:
    """Raise a one-line :class:`LandscapeError`, naming the flag, for any impossible setting.

    Checks every field's type and range (NaN and inf included), so a config read from a file is
    held to what the command line accepts.
    """
    for name, choices in CHOICES.items():
        v = getattr(cfg, name)
        if name == "model" and v is None:  # the model that fits the data, resolved with the data
            continue
        if not isinstance(v, str):
            raise LandscapeError(f"{flag(name)} must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise LandscapeError(f"unknown {name.replace('_', ' ')} '{v}' ({flag(name)}); choose one of "
                                 f"{', '.join(choices)}")
    for name in BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise LandscapeError(f"{flag(name)} must be true or false, got {getattr(cfg, name)!r}")
    for name, rng in RANGES.items():
        v = getattr(cfg, name)
        if not rng.admits(v):
            meaning = f" ({rng.meaning})" if rng.meaning else ""
            raise LandscapeError(f"{flag(name)} must be {rng.describe()}{meaning}, got {v!r}")
    if cfg.split_file is not None and not (isinstance(cfg.split_file, str) and cfg.split_file):
        raise LandscapeError(f"--split-file must be a file path, got {cfg.split_file!r}")
    if not isinstance(cfg.model_kwargs, dict) or not all(isinstance(k, str) for k in cfg.model_kwargs):
        raise LandscapeError(f"--model-kwargs must be a JSON object, got {cfg.model_kwargs!r}")
    if cfg.num_clients is not None and cfg.clients_per_round > cfg.num_clients:
        raise LandscapeError(
            f"--clients-per-round {cfg.clients_per_round} is more than the {cfg.num_clients} clients; "
            "lower it or raise --num-clients"
        )


# ---------------------------------------------------------------------------------------------
# Presets: the papers' settings. Each is a dict of TrainConfig fields; flags override them.
# ---------------------------------------------------------------------------------------------

def _c22(dataset: str, alpha: float, algorithm: str, swa: bool) -> dict[str, Any]:
    """[C22] CIFAR settings: App. C Tables 10-12."""
    c10 = dataset == "cifar10"
    sam_rho = {0: 0.1, 0.05: 0.1, 100: 0.02}[alpha] if c10 else {0: 0.02, 0.5: 0.05, 1000: 0.05}[alpha]
    asam_rho = ({0: 0.7, 0.05: 0.7, 100: 0.05}[alpha]) if c10 else 0.5
    base = {
        "algorithm": algorithm, "dataset": dataset, "model": "cnn", "num_clients": 100,
        "samples_per_client": 500, "alpha": alpha, "clients_per_round": 5,
        "num_rounds": 10000 if c10 else 20000, "lr": 0.01, "batch_size": 64, "local_epochs": 1,
        "weight_decay": 4e-4, "client_momentum": 0.0, "augment": True, "eval_every": 100,
        "save_every": 1000, "swa": swa, "swa_start": 0.75, "swa_gamma1": 1e-2, "swa_gamma2": 1e-4,
        "swa_cycle": 10 if c10 else 20, "cohort_sampling": "fedsam",
    }
    if algorithm == "fedsam":
        base["rho"] = sam_rho
    if algorithm == "fedasam":
        base.update(rho=asam_rho, eta=0.2)
    if algorithm == "fedavgm":
        base.update(server_lr=1.0, server_momentum=0.9)
    return base


def _build_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    presets: dict[str, tuple[str, dict[str, Any]]] = {}
    for dataset, alphas in (("cifar10", (0, 0.05, 100)), ("cifar100", (0, 0.5, 1000))):
        for alpha in alphas:
            for algorithm in ("fedavg", "fedavgm", "fedsam", "fedasam"):
                for swa in (False, True):
                    name = f"c22-{dataset}-a{alpha:g}-{algorithm}{'-swa' if swa else ''}"
                    desc = (f"[C22] {dataset} CNN, alpha={alpha:g}, {algorithm}{' + SWA' if swa else ''}; "
                            f"reference behaviour: fedsam's cohorts (np.random.seed(round)); pass its published "
                            f"split with --split-file")
                    presets[name] = (desc, _c22(dataset, alpha, algorithm, swa))
    presets["l26-cifar100-fednsam"] = (
        "[L26] reference setting: CIFAR-100, the FedNSAM code's 'LeNet-5' (lenet5-fednsam), 100 clients, 10 per "
        "round, lr 0.1, rho 0.05, gamma 0.85, wd 1e-3, Dirichlet 0.1 per class (= total alpha 10); reference "
        "behaviours: gradient clipping to 10, cosine lr decay, uniform client weights, its Dirichlet sampler "
        "(--partition fednsam); the paper's server rule "
        "(--fednsam-reference-momentum for the code's) and eps along the global momentum (--perturbation "
        "local_sam for the code's local SAM step)",
        {"algorithm": "fednsam", "dataset": "cifar100", "model": "lenet5-fednsam", "num_clients": 100,
         "samples_per_client": 500, "alpha": 10.0, "clients_per_round": 10, "num_rounds": 1000,
         "lr": 0.1, "batch_size": 50, "local_epochs": 5, "weight_decay": 1e-3, "rho": 0.05, "gamma": 0.85,
         "perturbation": "global_momentum", "augment": True, "eval_every": 10, "save_every": 100,
         "max_grad_norm": 10.0, "lr_schedule": "cosine", "client_weights": "uniform", "partition": "fednsam"},
    )
    presets["digits-demo"] = (
        "a minute-long demo on the offline digits data: MLP, 20 clients x 65, alpha 1, 5 per round",
        {"dataset": "digits", "model": "mlp", "model_kwargs": {"hidden": [64]}, "num_clients": 20,
         "samples_per_client": 65, "alpha": 1.0, "clients_per_round": 5, "num_rounds": 200,
         "lr": 0.1, "batch_size": 16, "local_epochs": 2, "weight_decay": 4e-4, "eval_every": 10,
         "save_every": 50},
    )
    return presets


PRESETS = _build_presets()


def preset(name: str) -> dict[str, Any]:
    """The field values of a preset (a copy).

    Raises:
        LandscapeError: unknown name (lists how to see the known ones).
    """
    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LandscapeError(f"unknown preset '{name}'{hint}; list them with `landscape train --list-presets`")
    return dict(PRESETS[name][1])


def make_config(preset_name: str | None = None, saved: dict[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """The one merge of a config: defaults < ``saved`` (a resumed run's) < the preset < ``overrides``.

    None values in ``overrides`` are ignored (flags not given). Whether a resumed run may take
    the result is checked in one place, :func:`landscape.train.run.train`.

    >>> make_config("digits-demo", lr=0.5).lr, make_config(saved={"lr": 0.3}).lr
    (0.5, 0.3)
    """
    values: dict[str, Any] = dict(saved or {})
    values.update(preset(preset_name) if preset_name else {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
