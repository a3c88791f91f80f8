"""Loading configurations: YAML files composed by concern, ``key=value`` overrides, the schema on top.

A YAML file may start with a ``defaults`` list of other YAML files (paths relative to that file, ``.yaml``
optional) that are merged first, in order, so that a run config reads like::

    defaults: [data/acdc, student/unet_ssl4mis, schedule/ssl4mis, method/mean_teacher]
    data:
      split: {labeled_count: 136}

Later sources win: defaults, then the file's own keys, then the command-line overrides. Everything is merged
onto :class:`~semisam.config.schema.RunConfig`, so an unknown key or a value of the wrong type fails with an
error that names the key.

Old spellings of the method (``method.name=semisam`` with ``pseudo_labels.mode`` / ``pseudo_labels.enabled``) are
translated here, and only here (:func:`translate_deprecated`), before validation: for YAML files, overrides and
configs read back from checkpoints alike, so the rest of the package only ever sees the current names.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semisam.config.schema import (
    SEMISAM_BACKBONES,
    SEMISAM_METHODS,
    ConfigError,
    RunConfig,
    reads_method_keys,
    trains_on_pseudo_labels,
    validate_config,
)
from semisam.utils import atomic_write_text

logger = logging.getLogger("semisam")

#: The values the deprecated ``pseudo_labels.mode`` took; ``mode=X`` is ``method.name=semisam_X``.
DEPRECATED_MODES = ("rounds", "online")


#: Keys removed from the schema after being fixed to the one value every run used: a saved config (a checkpoint's)
#: holding that value still loads, without the key; another value cannot be honoured and is an error.
REMOVED_KEYS = {"priors.projection_channels": 16}  # now semisam.student.unet.PROJECTION_CHANNELS


def _without_removed_keys(saved: dict) -> dict:
    """A copy of the saved config dict ``saved`` without the :data:`REMOVED_KEYS` it holds at their fixed value."""
    saved = copy.deepcopy(saved)
    for key, fixed in REMOVED_KEYS.items():
        *parents, leaf = key.split(".")
        node = saved
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if node[leaf] != fixed:
            raise ConfigError(f"{key}={node[leaf]} was removed: every run now uses {fixed}; this run cannot be loaded")
        del node[leaf]
    return saved


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    """Read one YAML file with its ``defaults`` merged underneath it."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config defaults form a cycle: {cycle}")
    if not path.is_file():
        if path.with_suffix(".yaml").is_file():
            path = path.with_suffix(".yaml")
        else:
            where = f" (listed in defaults of {chain[-1]})" if chain else ""
            raise ConfigError(f"config file not found: {path}{where}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if node is None or isinstance(node, ListConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys")
    defaults = node.pop("defaults", [])
    if not isinstance(defaults, (ListConfig, list)):
        raise ConfigError(f"{path}: 'defaults' must be a list of config files")
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, _read_yaml((path.parent / str(entry)).resolve(), (*chain, path)))
    return OmegaConf.merge(merged, node)


def load_config(
    path: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from YAML files and dotlist overrides.

    Args:
        path: a YAML config (with optional ``defaults``), several merged in order (later wins), or ``None``.
        base: a plain config dict merged before the files (e.g. the config stored in a checkpoint).
        overrides: ``key=value`` strings, e.g. ``["data.root=../shared/data/ACDC", "schedule.iterations=200"]``.

    Raises:
        ConfigError: unknown key, wrong type, missing required value, or a rule of ``validate_config`` broken.
    """
    schema = OmegaConf.structured(RunConfig)
    try:
        sources = [schema]
        if base is not None:
            sources.append(OmegaConf.create(_without_removed_keys(base)))
        paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
        for p in paths:
            sources.append(_read_yaml(Path(p).resolve(), ()))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        sources.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*sources)
        for note in translate_deprecated(merged):
            where = path if path else "a saved config" if base is not None else "the overrides"
            logger.warning("deprecated config spelling in %s: %s", where, note)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"required config keys have no value: {', '.join(missing)}")
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" (key '{key}')" if key else ""
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{source}{where}: {err.msg if hasattr(err, 'msg') else err}") from err
    validate_config(cfg)  # type: ignore[arg-type]  # to_object of a structured RunConfig is a RunConfig
    return cfg  # type: ignore[return-value]


def translate_deprecated(node: DictConfig) -> list[str]:
    """Rewrite the deprecated spellings of a merged config in place, and return one message per rewrite.

    ``pseudo_labels.mode`` and ``pseudo_labels.enabled`` chose among three algorithms under ``method.name=semisam``;
    they are translated into the method's name, then cleared (``None``):

    - a semisam name (``semisam``, ``semisam_rounds``, ``semisam_online``) with ``enabled=false``: semisam without
      pseudo-labels, i.e. its backbone with the priors as configured: ``mean_teacher`` for the backbone
      ``auto`` / ``mean_teacher``, else the backbone itself (still refused without priors, as before);
    - else ``mode=rounds|online`` -> ``semisam_rounds|semisam_online`` (the mode wins over the name, so that an old
      ``pseudo_labels.mode=online`` on a config whose file now says ``semisam_rounds`` still runs online); plain
      ``semisam`` without a mode -> ``semisam_rounds``, semisam's documented default (every shipped semisam config
      said ``mode: rounds``; only a config without them fell back on the schema's former default, ``online``);
      rounds on the backbone ``mean_teacher`` -> ``supervised`` (the same computation: the rounds set its
      consistency weight to 0, so its EMA was unused);
    - any other method: the keys never did anything there; they are cleared.

    Raises:
        ConfigError: ``mode`` neither ``rounds`` nor ``online``; ``enabled=false`` without priors.
    """
    name = OmegaConf.select(node, "method.name", default=None)
    enabled = OmegaConf.select(node, "pseudo_labels.enabled", default=None)
    mode = OmegaConf.select(node, "pseudo_labels.mode", default=None)
    if name != "semisam" and enabled is None and mode is None:
        return []
    if mode is not None and mode not in DEPRECATED_MODES:
        raise ConfigError(
            f"pseudo_labels.mode={mode!r} is not one of {', '.join(DEPRECATED_MODES)} "
            f"(deprecated: say method.name={' or '.join(SEMISAM_METHODS)})"
        )
    old = [f"{k}={v}" for k, v in (("method.name", name), ("pseudo_labels.enabled", enabled)) if v is not None]
    old += [f"pseudo_labels.mode={mode}"] if mode is not None else []
    backbone = OmegaConf.select(node, "method.backbone", default="auto")
    new_name, new_backbone, why = name, backbone, ""
    if name != "semisam" and name not in SEMISAM_METHODS:
        why = f"method.name={name} never read them"
    elif enabled is False:
        if not OmegaConf.select(node, "priors.enabled", default=False):
            raise ConfigError(f"method.name={name} needs pseudo_labels.enabled and/or priors.enabled")
        new_name = "mean_teacher" if backbone in ("auto", "mean_teacher") else backbone
        new_backbone = "auto"
        why = "semisam without pseudo-labels is its backbone, with the priors as configured"
    else:
        variant = mode or ("rounds" if name == "semisam" else name.removeprefix("semisam_"))
        new_name = f"semisam_{variant}"
        if variant == "rounds" and backbone == "mean_teacher":
            new_backbone = "supervised"
            why = "rounds on the mean teacher set its consistency weight to 0: the same computation without the EMA"
        elif name == "semisam" and mode is None:
            why = "no pseudo_labels.mode: semisam's documented default; method.name=semisam_online for online refreshes"
    if OmegaConf.select(node, "pseudo_labels", default=None) is not None:
        node.pseudo_labels.enabled = None
        node.pseudo_labels.mode = None
    if new_name is not None:
        node.method.name = new_name
    if new_backbone != backbone:
        node.method.backbone = new_backbone
    new = f"method.name={new_name}" + (f", method.backbone={new_backbone}" if new_backbone != backbone else "")
    if new_name == name and new_backbone == backbone:
        new = "nothing (cleared)"
    return [
        f"{', '.join(old)} -> {new}{f' ({why})' if why else ''}. pseudo_labels.mode / enabled and method.name=semisam "
        f"are deprecated: write method.name={' or '.join(SEMISAM_METHODS)} (and method.backbone)"
    ]


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain ``dict`` of a config (for checkpoints: loadable with ``torch.load(weights_only=True)``)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> RunConfig:
    """Inverse of :func:`config_to_dict` (with optional overrides), validated."""
    return load_config(None, overrides, base=data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_differences(cfg: RunConfig, saved: dict, ignore: Sequence[str] = ()) -> list[str]:
    """The settings in which ``cfg`` differs from ``saved`` (a :func:`config_to_dict` of another run).

    Returns one ``"key: old -> new"`` string per differing leaf, in schema order; keys in ``ignore`` are not
    compared. A key the saved config lacks (written by an older version, before the setting existed) reads as
    ``'<absent>'`` and differs, unless ``cfg`` holds the schema's default there: a new setting's default is the
    behaviour the older version had.
    """
    now, then = OmegaConf.create(config_to_dict(cfg)), OmegaConf.create(saved)
    translate_deprecated(then)  # a config saved before the method's current names says the same in the old ones
    for node in (now, then):
        _canonical_backbone(node)
    defaults = OmegaConf.structured(RunConfig)
    differing = []
    for key in _flat_keys(now):
        if key in ignore:
            continue
        old, new = OmegaConf.select(then, key, default="<absent>"), OmegaConf.select(now, key)
        if old == "<absent>" and new == OmegaConf.select(defaults, key, default="<absent>"):
            continue
        if old != new:
            differing.append(f"{key}: {old!r} -> {new!r}")
    return differing


def _canonical_backbone(node: DictConfig) -> None:
    """``method.backbone`` as what it means, for comparing two configs: ``auto`` resolved for the semisam methods,
    and ``auto`` for every other method (which never reads it; configs saved before ``auto`` hold the former
    default ``mean_teacher`` there)."""
    name = OmegaConf.select(node, "method.name", default=None)
    if OmegaConf.select(node, "method.backbone", default=None) is None:
        return
    if name in SEMISAM_BACKBONES:
        if node.method.backbone == "auto":
            node.method.backbone = SEMISAM_BACKBONES[name][0]
    else:
        node.method.backbone = "auto"


def _flat_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        value = node[key]
        if OmegaConf.is_dict(value):
            keys.extend(_flat_keys(value, f"{full}."))
        else:
            keys.append(full)
    return keys


def unused_keys(cfg: RunConfig) -> list[str]:
    """The settings that cannot change what ``cfg`` trains, for comparing a run with another (a scored run read
    back, a finished run standing for a round 0): the teacher's when neither priors nor pseudo-labels use it (its
    adaptation's when pseudo-labels do not, or the teacher is not adapted), the
    pseudo-labels' when the method does not train on them, the ``method.*`` keys its method does not read
    (:func:`~semisam.config.schema.reads_method_keys`), the pool's size when the method is supervised, and the
    test-time refinement's always."""
    data = config_to_dict(cfg)
    pseudo = trains_on_pseudo_labels(cfg)
    keys: list[str] = _flat_keys(OmegaConf.create(data["refine"]), "refine.")  # test-time only: never trains
    if not (pseudo or cfg.priors.enabled):
        keys += _flat_keys(OmegaConf.create(data["teacher"]), "teacher.")
    if not pseudo:
        keys += _flat_keys(OmegaConf.create(data["pseudo_labels"]), "pseudo_labels.")
        if cfg.priors.enabled:  # the priors are the published teacher's: its adaptation serves decodes only
            keys.append("teacher.adapt")
    if (pseudo or cfg.priors.enabled) and (not pseudo or cfg.teacher.adapt == "none"):  # no adaptation runs
        keys += _flat_keys(OmegaConf.create(data["teacher"]["adaptation"]), "teacher.adaptation.")
    read = reads_method_keys(cfg)
    for key, value in data["method"].items():
        if key not in read:
            keys += (
                _flat_keys(OmegaConf.create(value), f"method.{key}.") if isinstance(value, dict) else [f"method.{key}"]
            )
    if cfg.method.name == "supervised":  # nor does it read the unlabeled pool
        keys.append("data.split.unlabeled_count")
    return keys
