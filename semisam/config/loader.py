"""Loading configurations: YAML files composed by concern, ``key=value`` overrides, the schema on top.

A YAML file may start with a ``defaults`` list of other YAML files (paths relative to that file, ``.yaml``
optional) that are merged first, in order, so that a run config reads like::

    defaults: [data/acdc, student/unet_ssl4mis, schedule/ssl4mis, method/mean_teacher]
    data:
      split: {labeled_count: 136}

Later sources win: defaults, then the file's own keys, then the command-line overrides. Everything is merged
onto :class:`~semisam.config.schema.RunConfig`, so an unknown key or a value of the wrong type fails with an
error that names the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semisam.config.schema import (
    ConfigError,
    RunConfig,
    reads_method_keys,
    trains_on_pseudo_labels,
    validate_config,
)


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
            sources.append(OmegaConf.create(base))
        paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
        for p in paths:
            sources.append(_read_yaml(Path(p).resolve(), ()))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        sources.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*sources)
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


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain ``dict`` of a config (for checkpoints: loadable with ``torch.load(weights_only=True)``)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> RunConfig:
    """Inverse of :func:`config_to_dict` (with optional overrides), validated."""
    return load_config(None, overrides, base=data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from semisam.utils import atomic_write_text

    atomic_write_text(Path(path), OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_differences(cfg: RunConfig, saved: dict, ignore: Sequence[str] = ()) -> list[str]:
    """The settings in which ``cfg`` differs from ``saved`` (a :func:`config_to_dict` of another run).

    Returns one ``"key: old -> new"`` string per differing leaf, in schema order; keys in ``ignore`` are not
    compared. A key the saved config lacks (written by an older version, before the setting existed) reads as
    ``'<absent>'`` and differs, unless ``cfg`` holds the schema's default there: a new setting's default is the
    behaviour the older version had.
    """
    now, then = OmegaConf.create(config_to_dict(cfg)), OmegaConf.create(saved)
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
    back, a finished run standing for a round 0): the teacher's when neither priors nor pseudo-labels use it, the
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
    read = reads_method_keys(cfg)
    for key, value in data["method"].items():
        if key not in read:
            keys += (
                _flat_keys(OmegaConf.create(value), f"method.{key}.") if isinstance(value, dict) else [f"method.{key}"]
            )
    if cfg.method.name == "supervised":  # nor does it read the unlabeled pool
        keys.append("data.split.unlabeled_count")
    return keys
