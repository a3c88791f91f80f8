"""Dividing a data set's cases into labeled / unlabeled / val / test, as :class:`SplitConfig` documents.

The order of resolution (each step sees only what the previous ones left):

1. ``val`` / ``test`` from their files, if given.
2. The training pool: the ``train`` file, or else every available case not in val or test.
3. ``val`` / ``test`` carved from the pool by ``val_fraction`` / ``test_fraction`` when they have no file:
   the pool is permuted with ``carve_seed`` and the first ``round(f * N)`` cases (N = pool size before
   carving) go to val, the next ones to test. Carving does not depend on ``shuffle_seed``, so changing the
   labeled subset never changes the evaluation sets.
4. ``shuffle_seed`` (if set) permutes what is left of the pool; otherwise it keeps its file order.
5. Labeled: the ``labeled`` list, or the first ``labeled_count`` / ``round(labeled_fraction * N)`` of the pool
   (the ACDC literature protocol: the first N slices of ``train_slices.list``); with none of the three, every
   pool case is labeled (fully supervised).
6. Unlabeled: the rest of the pool, in pool order, capped at ``unlabeled_count``.

Every list keeps a deterministic order: file order, or the seeded permutation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semisam.config.schema import DataConfig, SplitConfig, SubsetConfig
from semisam.data.errors import DataError

#: Extensions stripped from ids in list files (longest first, compared case-insensitively).
ID_EXTENSIONS = (
    ".nii.gz",
    ".hdf5",
    ".nii",
    ".h5",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".npy",
    ".npz",
)

_SHOWN = 5  # ids quoted in an error message


@dataclass(frozen=True)
class Split:
    """Case ids of the four subsets; disjoint, each in a deterministic order."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]
    test: list[str]


def _show(ids: Sequence[str]) -> str:
    head = ", ".join(repr(i) for i in list(ids)[:_SHOWN])
    return f"[{head}{', ...' if len(ids) > _SHOWN else ''}] ({len(ids)} in all)"


def _strip_extension(case_id: str) -> str:
    lower = case_id.lower()
    for ext in ID_EXTENSIONS:
        if lower.endswith(ext) and len(case_id) > len(ext):
            return case_id[: -len(ext)]
    return case_id


def read_id_list(path: Path, key: str | None = None) -> list[str]:
    """Read case ids from a text list or a JSON file.

    Args:
        path: a ``.json`` file (a list at ``key``, or a top-level list when ``key`` is ``None``), or any other
            file as text: one id per line, blank lines skipped, surrounding whitespace stripped.
        key: the list's key inside a JSON object; must be ``None`` for a text list.

    Returns:
        The ids in file order, with a known file extension (``.h5``, ``.nii.gz``, ``.png``, ...) stripped.

    Raises:
        DataError: missing or unreadable file, missing key, a non-list or non-string entry, duplicate ids.
    """
    path = Path(path)
    where = f"{path} (key {key!r})" if key is not None else str(path)
    if not path.is_file():
        raise DataError(f"{path}: id list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read id list: {err}") from err
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except ValueError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
        if key is not None:
            if not isinstance(content, dict) or key not in content:
                keys = sorted(content) if isinstance(content, dict) else []
                raise DataError(f"{path}: no key {key!r} (keys: {keys})")
            content = content[key]
        if not isinstance(content, list):
            hint = "" if key is not None else "; name the list with a key (data.split.<subset>.key)"
            raise DataError(f"{where}: expected a list of ids, got {type(content).__name__}{hint}")
        bad = [v for v in content if not isinstance(v, str)]
        if bad:
            raise DataError(f"{where}: ids must be strings, got {bad[:_SHOWN]}")
        raw = [v.strip() for v in content]
    else:
        if key is not None:
            raise DataError(f"{path}: a text id list has no keys, but key {key!r} was given")
        raw = [line.strip() for line in text.splitlines()]
    ids = [_strip_extension(v) for v in raw if v]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise DataError(f"{where}: duplicate ids {_show(duplicates)}")
    return ids


def _subset_file(cfg: DataConfig, subset: SubsetConfig) -> Path | None:
    if subset.file is None:
        return None
    path = Path(subset.file)
    return path if path.is_absolute() else Path(cfg.root) / path


def _read_subset(cfg: DataConfig, name: str, available: set[str]) -> list[str] | None:
    """The ids of ``data.split.<name>`` from its file, each checked to exist; ``None`` without a file."""
    subset: SubsetConfig = getattr(cfg.split, name)
    path = _subset_file(cfg, subset)
    if path is None:
        if subset.key is not None:
            raise DataError(f"data.split.{name}.key={subset.key!r} is set but data.split.{name}.file is not")
        return None
    ids = read_id_list(path, subset.key)
    unknown = [i for i in ids if i not in available]
    if unknown:
        where = f"{path} (key {subset.key!r})" if subset.key is not None else str(path)
        raise DataError(f"{where}: ids not found in the data set under {cfg.root}: {_show(unknown)}")
    return ids


def _check_disjoint(subsets: dict[str, list[str]]) -> None:
    names = list(subsets)
    for i, a in enumerate(names):
        other = set(subsets[a])
        for b in names[i + 1 :]:
            common = [x for x in subsets[b] if x in other]
            if common:
                raise DataError(f"data.split: {a} and {b} share ids {_show(common)}")


def _fraction_count(fraction: float, total: int, key: str) -> int:
    count = round(fraction * total)
    if count == 0:
        raise DataError(f"data.split.{key}={fraction} of {total} pool cases selects none")
    return count


def resolve_split(cfg: DataConfig, available: Sequence[str]) -> Split:
    """Divide the cases a reader found into labeled / unlabeled / val / test following ``cfg.split``.

    Args:
        cfg: the data config; relative list files resolve against ``cfg.root``.
        available: every case id the reader has (:meth:`CaseReader.case_ids`).

    Returns:
        A :class:`Split` of disjoint id lists (see the module docstring for the rules and orders).

    Raises:
        DataError: duplicate ids, ids in a list that the reader does not have (naming the list file), labeled
            ids outside the training pool, overlapping subsets, a split that leaves no labeled data, counts or
            fractions that do not fit the pool.
    """
    split = cfg.split
    duplicates = sorted(i for i, n in Counter(available).items() if n > 1)
    if duplicates:
        raise DataError(f"{cfg.root}: duplicate case ids {_show(duplicates)}")
    known = set(available)
    val, test = _held_out_from_files(cfg, known)
    pool = _training_pool(cfg, available, known, val, test)
    pool, val, test = _carve_held_out(split, pool, val, test)
    if split.shuffle_seed is not None:
        pool = [pool[k] for k in np.random.default_rng(split.shuffle_seed).permutation(len(pool))]
    labeled = _labeled_subset(cfg, pool, known)
    labeled_set = set(labeled)
    unlabeled = [i for i in pool if i not in labeled_set]
    if split.unlabeled_count is not None:
        if split.unlabeled_count < 0:
            raise DataError(f"data.split.unlabeled_count={split.unlabeled_count} must be >= 0")
        unlabeled = unlabeled[: split.unlabeled_count]

    _check_disjoint({"labeled": labeled, "unlabeled": unlabeled, "val": val, "test": test})
    return Split(labeled=list(labeled), unlabeled=unlabeled, val=list(val), test=list(test))


def _held_out_from_files(cfg: DataConfig, known: set[str]) -> tuple[list[str] | None, list[str] | None]:
    """Step 1: ``(val, test)`` from their files (``None`` for a subset without one); a subset given both a file
    and a fraction is an error."""
    split = cfg.split
    val = _read_subset(cfg, "val", known)
    test = _read_subset(cfg, "test", known)
    for name, ids, fraction in (("val", val, split.val_fraction), ("test", test, split.test_fraction)):
        if ids is not None and fraction > 0:
            raise DataError(f"data.split: give either {name}.file or {name}_fraction={fraction}, not both")
    return val, test


def _training_pool(
    cfg: DataConfig, available: Sequence[str], known: set[str], val: list[str] | None, test: list[str] | None
) -> list[str]:
    """Step 2: the ``train`` file's ids (disjoint from val and test), or every available case not held out, in
    the reader's order."""
    pool = _read_subset(cfg, "train", known)
    if pool is None:
        held_out = set(val or []) | set(test or [])
        return [i for i in available if i not in held_out]
    _check_disjoint({"train": pool, "val": val or [], "test": test or []})
    return pool


def _carve_held_out(
    split: SplitConfig, pool: list[str], val: list[str] | None, test: list[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """Step 3: ``(pool, val, test)`` with val / test carved from the pool by their fractions where they have no
    file (a permutation drawn from ``carve_seed`` alone; each carved list keeps pool order)."""
    total = len(pool)
    n_val = _fraction_count(split.val_fraction, total, "val_fraction") if val is None and split.val_fraction else 0
    n_test = _fraction_count(split.test_fraction, total, "test_fraction") if test is None and split.test_fraction else 0
    if n_val or n_test:
        if n_val + n_test >= total:
            raise DataError(
                f"data.split: val_fraction/test_fraction carve {n_val}+{n_test} of {total} pool cases, "
                f"leaving none to train on"
            )
        order = np.random.default_rng(split.carve_seed).permutation(total)
        val_idx, test_idx = set(order[:n_val].tolist()), set(order[n_val : n_val + n_test].tolist())
        if n_val:
            val = [c for k, c in enumerate(pool) if k in val_idx]
        if n_test:
            test = [c for k, c in enumerate(pool) if k in test_idx]
        pool = [c for k, c in enumerate(pool) if k not in val_idx and k not in test_idx]
    return pool, val or [], test or []


def _labeled_subset(cfg: DataConfig, pool: list[str], known: set[str]) -> list[str]:
    """Step 5: the labeled ids, from exactly one of ``labeled.file`` (ids of the pool), ``labeled_count`` or
    ``labeled_fraction`` (the first ones of the pool), or the whole pool; never empty."""
    split = cfg.split
    given = [
        k
        for k, v in (
            ("labeled.file", split.labeled.file),
            ("labeled_count", split.labeled_count),
            ("labeled_fraction", split.labeled_fraction),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise DataError(f"data.split: give only one of labeled.file / labeled_count / labeled_fraction, got {given}")
    labeled_list = _read_subset(cfg, "labeled", known)
    if labeled_list is not None:
        in_pool = set(pool)
        outside = [i for i in labeled_list if i not in in_pool]
        if outside:
            path = _subset_file(cfg, split.labeled)
            raise DataError(f"{path}: labeled ids not in the training pool: {_show(outside)}")
        labeled = labeled_list
    elif split.labeled_count is not None:
        if not 0 < split.labeled_count <= len(pool):
            raise DataError(f"data.split.labeled_count={split.labeled_count} must be in 1..{len(pool)} (the pool size)")
        labeled = pool[: split.labeled_count]
    elif split.labeled_fraction is not None:
        if not 0 < split.labeled_fraction <= 1:
            raise DataError(f"data.split.labeled_fraction={split.labeled_fraction} must be in (0, 1]")
        labeled = pool[: _fraction_count(split.labeled_fraction, len(pool), "labeled_fraction")]
    else:
        labeled = list(pool)
    if not labeled:
        raise DataError(f"data.split leaves no labeled data (training pool of {len(pool)} cases under {cfg.root})")
    return labeled
