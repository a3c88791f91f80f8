"""Benchmark protocols, variants and scales: which configs a benchmark run is made of.

A variant is a row of the results table: a named set of overrides on one of the protocol's method configs
(``semisam_unimatch``, ``semisam_pl``, ``semisam_priors``, ...); its overrides say the method in ``method.name``
(:data:`semisam.config.schema.METHOD_NAMES`). A run of protocol ``P``, variant ``V``, scale ``S`` and seed ``s`` is
the config ``configs/<P.config_dir>/<P.prefix>_<V.config>.yaml`` merged with the scale's file (if any), then the
variant's overrides, then ``seed=s`` and the run's own ``output_dir`` / ``teacher.cache_dir``. Every variant of one
protocol and scale therefore shares the student, schedule, data split, seed and budget; only the method differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semisam.config.schema import ConfigError

#: The repository's ``configs/`` folder (the benchmark reads the same files the README's commands use).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Protocol:
    """A data set, its labeled subset and where its configs live.

    Attributes:
        name: e.g. ``acdc-3``.
        config_dir: folder under ``configs/`` with ``<prefix>_{supervised,mean_teacher,semisam}.yaml``.
        prefix: the labeled-subset part of those names (``3``, ``7``, ``5``, ``10``).
        description: one line for the results page.
    """

    name: str
    config_dir: str
    prefix: str
    description: str

    def method_config(self, method: MethodVariant, configs_dir: Path = CONFIGS_DIR) -> Path:
        """The protocol's YAML for ``method`` (its base config, before the scale and the variant's overrides)."""
        return configs_dir / self.config_dir / f"{self.prefix}_{method.config}.yaml"


@dataclass(frozen=True)
class MethodVariant:
    """A row of the results table: a method config and the overrides that make the ablation."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Scale:
    """A schedule/size regime applied to every method alike: ``configs/benchmark/<file>`` per data set."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # protocol config_dir -> file under configs/benchmark
    description: str = ""

    def config(self, protocol: Protocol, configs_dir: Path = CONFIGS_DIR) -> Path | None:
        """The scale's YAML for ``protocol`` (``None``: the protocol's own schedule)."""
        name = self.files.get(protocol.config_dir)
        return None if name is None else configs_dir / "benchmark" / name


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("acdc-3", "acdc", "3", "ACDC, 3 labeled patients (first 68 slices of train_slices.list)"),
        Protocol("acdc-7", "acdc", "7", "ACDC, 7 labeled patients (first 136 slices of train_slices.list)"),
        Protocol("kvasir-5", "kvasir", "5", "Kvasir-SEG, 5 % labeled (splits.json labeled_5pct, 40 images)"),
        Protocol("kvasir-10", "kvasir", "10", "Kvasir-SEG, 10 % labeled (splits.json labeled_10pct, 80 images)"),
    )
}

EMBEDDING_PRIORS = ("priors.enabled=true", "priors.source=embeddings")  # the teacher's image embedding as input
ADAPTED_TEACHER = "teacher.adapt=decoder"  # the teacher's mask decoder trained on the labeled images

VARIANTS: dict[str, MethodVariant] = {
    m.name: m
    for m in (
        MethodVariant("supervised", "supervised", description="labeled images only"),
        MethodVariant(
            "supervised_priors",
            "supervised",
            ("priors.enabled=true",),
            "labeled images only, SAMAug priors as two more input channels",
        ),
        MethodVariant(
            "supervised_samaug",
            "supervised",
            ("priors.enabled=true", "priors.fusion=add", "priors.alternate=true"),
            "labeled images only, SAMAug's whole recipe: priors added to the G and B channels, steps alternating "
            "raw and augmented inputs, the more confident of the two predictions at test time",
        ),
        MethodVariant("mean_teacher", "mean_teacher", description="SSL4MIS mean teacher"),
        MethodVariant("unimatch", "unimatch", description="UniMatch: weak-to-strong, CutMix, feature perturbation"),
        MethodVariant(
            "fixmatch",
            "unimatch",
            ("method.unimatch.strong_views=1", "method.unimatch.feature_perturbation=false"),
            "FixMatch with CutMix: UniMatch with one strong view and no feature perturbation",
        ),
        MethodVariant("bcp", "bcp", description="bidirectional copy-paste with an EMA teacher"),
        MethodVariant(
            "semisam_priors",
            "semisam",
            ("method.name=mean_teacher", "priors.enabled=true"),
            "mean teacher + SAMAug priors as input channels",
        ),
        MethodVariant(
            "semisam_pl",
            "semisam",
            ("method.name=semisam_online", "priors.enabled=false"),
            "mean teacher + rectified teacher pseudo-labels refreshed online",
        ),
        MethodVariant(
            "semisam_online",
            "semisam",
            ("method.name=semisam_online", "priors.enabled=true"),
            "mean teacher + priors + rectified pseudo-labels refreshed online",
        ),
        MethodVariant(
            "semisam_rounds_pl",
            "semisam",
            ("method.name=semisam_rounds", "priors.enabled=false"),
            "self-training rounds on the teacher's rectified pseudo-labels of the most reliable images",
        ),
        MethodVariant(
            "semisam_rounds_pool_pl",
            "semisam",
            ("method.name=semisam_rounds", "priors.enabled=false", "data.split.unlabeled_count=null"),
            "self-training rounds labeling the whole unlabeled pool instead of the scale's reduced one",
        ),
        MethodVariant(
            "semisam_rounds2_pl",
            "semisam",
            ("method.name=semisam_rounds", "pseudo_labels.rounds=2", "priors.enabled=false"),
            "two self-training rounds: round 2 relabels the pool with round 1's student",
        ),
        MethodVariant(
            "semisam_rounds_priors",
            "semisam",
            ("method.name=semisam_rounds", "priors.enabled=true"),
            "self-training rounds + SAMAug priors as input channels",
        ),
        MethodVariant(
            "semisam_unimatch",
            "semisam",
            ("method.name=semisam_rounds", "method.backbone=unimatch", "priors.enabled=false"),
            "self-training rounds on UniMatch: round 0 is UniMatch, round 1 UniMatch on the whole pool with the "
            "teacher's rectified labels replacing its own on the selected images",
        ),
        MethodVariant(
            "semisam_bcp",
            "semisam",
            ("method.name=semisam_rounds", "method.backbone=bcp", "priors.enabled=false"),
            "self-training rounds on BCP: round 0 is BCP, round 1 BCP with the teacher's labels on the selected images",
        ),
        MethodVariant("semisam", "semisam", description="semisam as configs/method/semisam.yaml sets it (the default)"),
        MethodVariant(
            "supervised_feat",
            "supervised",
            EMBEDDING_PRIORS,
            "labeled images only, the teacher's image embedding (PCA components, learned projection) as input",
        ),
        MethodVariant(
            "head_feat",
            "supervised",
            (*EMBEDDING_PRIORS, "student.arch=embedding_head"),
            "the reference without a U-Net: a small convolutional head on the embedding priors alone, labeled images",
        ),
        MethodVariant(
            "unimatch_feat",
            "unimatch",
            EMBEDDING_PRIORS,
            "UniMatch with the teacher's image embedding as input",
        ),
        MethodVariant(
            "semisam_feat",
            "semisam",
            ("method.name=semisam_rounds", *EMBEDDING_PRIORS),
            "self-training rounds on supervised_feat: the teacher's embedding as input and its pseudo-labels",
        ),
        MethodVariant(
            "semisam_unimatch_feat",
            "semisam",
            ("method.name=semisam_rounds", "method.backbone=unimatch", *EMBEDDING_PRIORS),
            "self-training rounds on unimatch_feat",
        ),
        MethodVariant(
            "semisam_feat_adapted",
            "semisam",
            ("method.name=semisam_rounds", *EMBEDDING_PRIORS, ADAPTED_TEACHER),
            "semisam_feat with the teacher's decoder adapted to the labeled images",
        ),
        MethodVariant(
            "semisam_unimatch_feat_adapted",
            "semisam",
            ("method.name=semisam_rounds", "method.backbone=unimatch", *EMBEDDING_PRIORS, ADAPTED_TEACHER),
            "semisam_unimatch_feat with the teacher's decoder adapted to the labeled images",
        ),
        MethodVariant(
            "semisam_unimatch_adapted",
            "semisam",
            ("method.name=semisam_rounds", "method.backbone=unimatch", "priors.enabled=false", ADAPTED_TEACHER),
            "semisam_unimatch with the teacher's decoder adapted to the labeled images",
        ),
    )
}
# Every rounds variant's same-steps control: its rounds as configured, without a teacher label. A "semisam on X"
# gain is judged against it (round 1 trains more steps than round 0 alone).
VARIANTS.update(
    {
        f"{v.name}_control": MethodVariant(
            f"{v.name}_control",
            v.config,
            (*(o for o in v.overrides if o != ADAPTED_TEACHER), "pseudo_labels.control=true"),
            f"the same-steps control of {v.name}: its rounds trained without teacher labels",
        )
        for v in list(VARIANTS.values())
        if "method.name=semisam_rounds" in v.overrides and ADAPTED_TEACHER not in v.overrides
    }
)

SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale(
            "cpu",
            {"acdc": "cpu_acdc.yaml", "kvasir": "cpu_kvasir.yaml"},
            "1500 AdamW steps at 128x128, batch 8 + 8, residual instance-norm UNet, a reduced unlabeled pool, "
            "a 20-25-box everything grid",
        ),
        Scale("full", {}, "the literature's schedule: 30k SGD steps, batch 12 + 12, 256x256 (a GPU)"),
    )
}


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; choose from {', '.join(table)}")
    return table[name]


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; :class:`ConfigError` naming the choices otherwise."""
    return _pick(PROTOCOLS, name, "protocol")


def get_variant(name: str) -> MethodVariant:
    """The variant called ``name``; :class:`ConfigError` naming the choices otherwise."""
    return _pick(VARIANTS, name, "method")


def get_scale(name: str) -> Scale:
    """The scale called ``name``; :class:`ConfigError` naming the choices otherwise."""
    return _pick(SCALES, name, "scale")
