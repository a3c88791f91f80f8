"""Kill -9 at a random point, run the same command again, and end exactly where an uninterrupted run ends.

The tools run as real subprocesses on tiny phantom data and are killed with SIGKILL (no cleanup code runs, as
when a job is pre-empted or runs out of memory): ``tools/train.py`` at a random iteration after its first
checkpoint, ``tools/precompute.py`` at a random case. The kill point comes from a seeded generator (set
``SEMISAM_KILL_SEED`` to try others) plus a random delay, so that it lands anywhere in a step, including in the
middle of a checkpoint or cache write.

``tools/precompute.py`` builds its teacher with ``semisam.teacher.engine.build_teacher``; the test starts the
tool through a three-line wrapper (:data:`TINY_TEACHER_WRAPPER`) that replaces it with the package's tiny
random SAM before running the tool's own ``__main__``, so no test hook lives in the package.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import REPO, tiny_overrides

DEMO = REPO / "configs" / "demo.yaml"
SEED = int(os.environ.get("SEMISAM_KILL_SEED", "20260517"))
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

# One thread per process, like the in-process tests (conftest): on a busy 2-core machine several OpenMP threads per
# process make a tiny run tens of times slower. Same setting in every run, so bitwise comparisons hold.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _kill(proc: subprocess.Popen, delay: float) -> None:
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, "the process finished before the kill: the test killed nothing"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".part"))


# ----------------------------------------------------------------------------------------------------------
# tools/train.py
# ----------------------------------------------------------------------------------------------------------

ITERATIONS = 60


def _train_cmd(root: Path, out: Path) -> list[str]:
    overrides = tiny_overrides(
        root,
        out,
        **{
            "method.name": "mean_teacher",
            "deterministic": "true",
            "schedule.iterations": str(ITERATIONS),
            "schedule.checkpoint_every": "2",
            "schedule.val_every": "20",
            "schedule.image_every": "40",
        },
    )
    return [sys.executable, str(REPO / "tools/train.py"), "--config", str(DEMO), "--no-progress", *overrides]


def _last_logged_iteration(run: Path) -> int:
    path = run / "metrics.csv"
    if not path.exists():
        return 0
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return max((int(r[0]) for r in rows[1:] if len(r) == 3 and r[0].isdigit()), default=0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema"]["module"].items()})
    return out


def _val_rows(run: Path) -> list[tuple[str, str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return [(r["iteration"], r["tag"], r["value"]) for r in csv.DictReader(f) if r["tag"].startswith("val/")]


def test_train_killed_at_a_random_point_resumes_to_the_same_weights(phantom_root, tmp_path):
    rng = random.Random(SEED)
    _run(_train_cmd(phantom_root, tmp_path / "straight"))

    killed = tmp_path / "killed"
    target = rng.randint(3, ITERATIONS - 10)  # after the first checkpoint (iteration 2), well before the end
    proc = subprocess.Popen(
        _train_cmd(phantom_root, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV
    )
    _wait_for(lambda: _last_logged_iteration(killed) >= target, proc, f"iteration {target}")
    _kill(proc, rng.uniform(0.0, 0.05))  # anywhere in a step (ten steps take longer)
    at_kill = torch.load(killed / "checkpoints/last.pt", weights_only=True)["iteration"]
    assert 2 <= at_kill < ITERATIONS

    _run(_train_cmd(phantom_root, killed))  # the same command again

    final = torch.load(killed / "checkpoints/last.pt", weights_only=True)
    assert final["iteration"] == ITERATIONS
    a, b = _weights(tmp_path / "straight/checkpoints/last.pt"), _weights(killed / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"killed at iteration ~{at_kill}: {different[:5]} differ"
    assert _val_rows(killed) == _val_rows(tmp_path / "straight")  # the same validation Dice, nothing duplicated
    assert _temporaries(killed) == []


# ----------------------------------------------------------------------------------------------------------
# tools/precompute.py
# ----------------------------------------------------------------------------------------------------------

#: Runs tools/precompute.py as ``__main__`` with the package's tiny random SAM as the teacher.
TINY_TEACHER_WRAPPER = """
import runpy, sys
from semisam.teacher import engine, models
build = engine.build_teacher
engine.build_teacher = lambda cfg, **kw: build(cfg, sam=models.build_tiny_sam(seed=0), spec=models.tiny_spec())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

SPLITS = "labeled,unlabeled,val"
LIMIT = 3  # cases per split: 9 cases


def _precompute_cmd(root: Path, cache: Path) -> list[str]:
    overrides = [
        f"data.root={root}",
        "data.image_size=[32,32]",
        "data.split.labeled_count=6",
        "device=cpu",
        f"teacher.cache_dir={cache}",
        "teacher.everything.points_per_side=6",  # about 0.4 s a case on a CPU core: time to land a kill
        "teacher.everything.pred_iou_thresh=0.0",
        "teacher.everything.stability_score_thresh=0.0",
    ]
    return [
        sys.executable,
        "-c",
        TINY_TEACHER_WRAPPER,
        str(REPO / "tools/precompute.py"),
        "--config",
        str(DEMO),
        "--no-progress",
        "--splits",
        SPLITS,
        "--limit",
        str(LIMIT),
        *overrides,
    ]


def _cache_files(cache: Path) -> dict[str, Path]:
    return {f"{p.parent.name}/{p.name}": p for p in cache.rglob("*.npy")}


def test_precompute_killed_at_a_random_case_completes_without_recomputing(phantom_root, tmp_path):
    rng = random.Random(SEED + 1)
    straight = _run(_precompute_cmd(phantom_root, tmp_path / "straight")).stdout
    seconds_per_case = float(re.search(r"\(([\d.]+) s per image\)", straight).group(1))
    reference = _cache_files(tmp_path / "straight")
    cases = len([k for k in reference if k.startswith("priors/")])
    # embeddings of labeled, unlabeled and (semisam calibrates trust on held-out cases) val cases
    assert cases == 3 * LIMIT and len([k for k in reference if k.startswith("embeddings/")]) == 3 * LIMIT

    cache = tmp_path / "killed"
    target = rng.randint(1, cases - 3)
    proc = subprocess.Popen(
        _precompute_cmd(phantom_root, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV
    )
    _wait_for(lambda: len(list(cache.rglob("priors/*.npy"))) >= target, proc, f"{target} cached cases")
    _kill(proc, rng.uniform(0.0, seconds_per_case))  # anywhere in the next case, with two more to go
    finished = {name: path.stat().st_mtime_ns for name, path in _cache_files(cache).items()}
    assert target <= len([k for k in finished if k.startswith("priors/")]) < cases

    out = _run(_precompute_cmd(phantom_root, cache)).stdout  # the same command again
    files = _cache_files(cache)
    assert files.keys() == reference.keys()  # every case, in both stores
    assert _temporaries(cache) == []  # no partial file survives the kill
    untouched = {name for name, mtime in finished.items() if files[name].stat().st_mtime_ns == mtime}
    assert untouched == set(finished), "finished cases were written again"
    done_priors = len([k for k in finished if k.startswith("priors/")])
    assert f"{done_priors} cases were already cached" in out
    for name, path in files.items():
        expected = np.load(reference[name], allow_pickle=False)
        assert np.array_equal(np.load(path, allow_pickle=False), expected), name


# ----------------------------------------------------------------------------------------------------------
# What a kill can leave behind, made on purpose
# ----------------------------------------------------------------------------------------------------------


def test_temporaries_of_a_killed_write_are_removed_on_the_next_write(tmp_path):
    from semisam.student.checkpoint import save_checkpoint
    from semisam.teacher.cache import CacheStore

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (ckpts / ".best.pt.x.tmp").write_bytes(b"another file's temporary")
    save_checkpoint(ckpts / "last.pt", {"model": {}, "config": {}})
    assert sorted(p.name for p in ckpts.iterdir()) == [".best.pt.x.tmp", "last.pt"]  # only last.pt's

    store = CacheStore(tmp_path / "cache", "priors")
    assert store.prepare({"teacher": "t"}) is False
    store.save("a", np.zeros((2, 4, 4)))
    (store.dir / ".b.npy.q9.tmp").write_bytes(b"half an array")
    assert store.prepare({"teacher": "t"}) is True  # kept: finished cases stay, the temporary goes
    assert sorted(p.name for p in store.dir.iterdir()) == ["a.npy", "manifest.json"]


def test_a_partial_metrics_row_is_dropped_on_resume(tmp_path):
    from semisam.run_logger import RunLogger

    log = RunLogger(tmp_path, 0)
    log.scalars(1, {"loss": 0.5})
    log.scalars(2, {"loss": 0.25})
    log.close()
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("1")  # killed after the first digit of "10,loss,...": it must not pass for iteration 1
    RunLogger(tmp_path, 2).close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["iteration,tag,value", "1,loss,0.5", "2,loss,0.25"]
