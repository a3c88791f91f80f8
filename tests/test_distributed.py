"""Several processes (torchrun, DistributedDataParallel) on the CPU with Gloo: two-process training keeps every rank
identical, writes each file once and resumes exactly; a two-process precompute computes every case once; the real
torchrun commands run."""

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from semisam import distributed
from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.data.dataset import IterationBatchSampler
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.trainer import Trainer
from semisam.teacher.cache import CacheStore, cache_root, expected_manifest
from semisam.workflow.train import build_trainer

from .conftest import REPO, tiny_overrides

DEMO = REPO / "configs" / "demo.yaml"
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    """What torchrun does for a worker: the environment, then the process group."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    assert distributed.init_from_env("cpu")


def _weights(trainer: "Trainer") -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.module.state_dict().items()})
    return state


def _spawn(worker, *args) -> None:
    mp.spawn(worker, args=(_free_port(), *args), nprocs=WORLD, join=True)


def test_rank_shares_are_disjoint_and_make_the_global_batch():
    def sampler():
        return IterationBatchSampler(10, 3 * WORLD, total=7, seed=5, start=2)

    shares = [list(distributed.RankBatchSampler(sampler(), r, WORLD)) for r in range(WORLD)]
    for t, whole in enumerate(sampler()):
        assert shares[0][t] + shares[1][t] == whole and len(shares[0][t]) == 3
    assert distributed.shard_batches(sampler()).__class__ is IterationBatchSampler  # one process: untouched
    assert (
        distributed.world_size() == 1
        and distributed.is_main()
        and distributed.all_reduce_mean({"a": 2.0}) == {"a": 2.0}
    )


# ---------------------------------------------------------------------------------------------- training
def _train_worker(rank: int, port: int, overrides: dict[str, list[str]], out) -> None:
    _join(rank, port)
    from semisam.engine import trainer as trainer_module

    saves: list[str] = []
    real_save = trainer_module.save_checkpoint

    def counting_save(path, state):
        saves.append(str(path))
        real_save(path, state)

    trainer_module.save_checkpoint = counting_save
    record: dict = {"saves": saves, "mean_of_ranks": distributed.all_reduce_mean({"x": float(rank)})["x"]}
    try:
        straight = build_trainer(load_config(DEMO, overrides["straight"]), progress=False)
        record["iterations"] = straight.fit().iterations
        build_trainer(load_config(DEMO, overrides["killed"]), progress=False).fit(stop_at=4)
        resumed = build_trainer(load_config(DEMO, overrides["killed"]), progress=False)
        resumed.fit()
        record["resumed_iterations"] = resumed.iteration
        torch.save({"straight": _weights(straight), "resumed": _weights(resumed)}, out / f"rank{rank}.pt")
        try:  # a checkpoint of one process
            build_trainer(load_config(DEMO, overrides["single"]), progress=False).fit()
        except ConfigError as err:
            record["refused"] = str(err)
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        distributed.cleanup()


def test_two_process_training_is_identical_on_every_rank_and_resumes_exactly(phantom_root, tmp_path):
    extra = {"method.name": "mean_teacher", "deterministic": "true"}
    overrides = {name: tiny_overrides(phantom_root, tmp_path / name, **extra) for name in ("straight", "killed")}
    overrides["single"] = tiny_overrides(phantom_root, tmp_path / "single", **extra)
    build_trainer(load_config(DEMO, overrides["single"]), progress=False).fit(stop_at=3)  # one process, then two
    out = tmp_path / "ranks"
    out.mkdir()
    _spawn(_train_worker, overrides, out)

    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["iterations"] for r in records] == [6, 6] and [r["resumed_iterations"] for r in records] == [6, 6]
    assert [r["mean_of_ranks"] for r in records] == [0.5, 0.5]
    # every rank ends with the same model and EMA (parameters and batch-norm statistics), and a run killed at
    # iteration 4 and resumed under torchrun ends bitwise where the uninterrupted one does
    reference = weights[0]["straight"]
    assert any(k.endswith("running_mean") for k in reference)
    for rank_weights in weights:
        for run in ("straight", "resumed"):
            assert rank_weights[run].keys() == reference.keys()
            for key, value in reference.items():
                assert torch.equal(rank_weights[run][key], value), (run, key)
    last = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    assert last["iteration"] == 6 and last["world_size"] == WORLD and len(last["rank_rng"]) == WORLD
    for key, value in last["model"].items():
        assert torch.equal(value, reference[f"model.{key}"]), key

    # rank 0 writes every checkpoint, once per occasion; the other rank writes none
    assert records[1]["saves"] == []
    straight_saves = [p.rsplit("/", 1)[1] for p in records[0]["saves"] if "/straight/" in p]
    assert straight_saves.count("last.pt") == 2 and "best.pt" in straight_saves  # last at iterations 3 and 6
    assert (tmp_path / "straight/config.yaml").is_file() and (tmp_path / "straight/environment.json").is_file()
    with (tmp_path / "straight/metrics.csv").open() as f:
        rows = [(int(r["iteration"]), r["tag"]) for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows))  # one process records
    assert [it for it, tag in rows if tag == "loss/total"] == [1, 2, 3, 4, 5, 6]
    assert [it for it, tag in rows if tag == "val/dice"] == [3, 6]
    with (tmp_path / "killed/metrics.csv").open() as f:
        resumed_rows = [(int(r["iteration"]), r["tag"]) for r in csv.DictReader(f)]
    assert sorted(resumed_rows) == sorted(rows)  # the resumed record is the uninterrupted one
    # a checkpoint of one process is not resumed by two
    assert all("1 process(es)" in r["refused"] and "--nproc_per_node=1" in r["refused"] for r in records)


# ---------------------------------------------------------------------------------------------- precompute
def _tiny_teacher():
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.models import build_tiny_sam, tiny_spec

    cfg = load_config(DEMO, ["data.root=unused", "device=cpu"])
    return build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=tiny_spec())


def _precompute_worker(rank: int, port: int, overrides: list[str], train_overrides: list[str], out) -> None:
    _join(rank, port)
    from semisam.teacher import cache as cache_module
    from semisam.teacher import precompute as pc

    saved: list[list[str]] = []
    manifests: list[str] = []
    real_save, real_write = cache_module.CacheStore.save, cache_module.atomic_write_text

    def counting_save(store, case_id, array):
        saved.append([store.kind, case_id])
        real_save(store, case_id, array)

    def counting_write(path, text):
        manifests.append(str(path))
        real_write(path, text)

    cache_module.CacheStore.save = counting_save
    cache_module.atomic_write_text = counting_write
    record: dict = {"saved": saved, "manifests": manifests}
    try:
        teacher = _tiny_teacher()
        report = pc.precompute(load_config(DEMO, overrides), teacher=teacher, progress=False)
        record["report_computed"] = sorted(report.computed)
        # then semisam training with pseudo-label refreshes on that cache: rank 0 refreshes, rank 1 reads its banks
        trainer = build_trainer(
            load_config(DEMO, train_overrides), progress=False, teacher=teacher if rank == 0 else None
        )
        record["iterations"] = trainer.fit().iterations
        bank = trainer.bank_source.bank
        digest = hashlib.sha256()
        for index in sorted(bank.entries):
            for array in (bank.entries[index].label, bank.entries[index].weight):
                digest.update(np.ascontiguousarray(array).tobytes())
        record["bank"] = [bank.iteration, len(bank.entries), digest.hexdigest()]
        record["has_teacher"] = hasattr(trainer.bank_source, "teacher")
        torch.save(_weights(trainer), out / f"rank{rank}.pt")
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        distributed.cleanup()


def test_two_process_precompute_computes_every_case_once_then_semisam_trains(phantom_root, tmp_path):
    cache = [
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "teacher.everything.box_scales=[0.5]",
        "teacher.everything.pred_iou_thresh=0.0",
        "teacher.everything.stability_score_thresh=0.0",
        "teacher.everything.points_per_side=4",  # the tiny teacher takes points: a small automatic-mask grid
    ]
    # a semisam config: its pseudo-label refreshes calibrate trust on the val cases, whose embeddings are kept too
    overrides = tiny_overrides(phantom_root, tmp_path / "unused", **{"method.name": "semisam_online"}) + cache
    train_overrides = [
        *tiny_overrides(phantom_root, tmp_path / "run", **{"method.name": "semisam_online"}),
        *cache,
        "pseudo_labels.warmup=0.34",  # refreshes before iterations 2 and 4 of 6
        "pseudo_labels.refresh_every=2",
        "pseudo_labels.perturbations=2",
        "pseudo_labels.calibration_images=3",
        "pseudo_labels.min_area=1",
        "pseudo_labels.min_model_dice=0.0",
        "deterministic=true",
    ]
    out = tmp_path / "ranks"
    out.mkdir()
    _spawn(_precompute_worker, overrides, train_overrides, out)
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]

    cfg = load_config(DEMO, overrides)
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    all_cases = [*split.labeled, *split.unlabeled, *split.val, *split.test]
    embedded_cases = [*split.labeled, *split.unlabeled, *split.val]
    saved = [tuple(s) for r in records for s in r["saved"]]
    assert len(saved) == len(set(saved))  # no case computed twice, by one rank or by both
    assert sorted(c for k, c in saved if k == "priors") == sorted(all_cases)
    assert sorted(c for k, c in saved if k == "embeddings") == sorted(embedded_cases)
    per_rank = [{c for _, c in r["saved"]} for r in records]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]  # both worked, on disjoint cases
    assert records[0]["report_computed"] == sorted(all_cases)  # rank 0 reports the whole run

    root = cache_root(cfg)
    manifest_writes = [p for r in records for p in r["manifests"] if p.endswith("manifest.json")]
    assert sorted(manifest_writes) == sorted(str(root / kind / "manifest.json") for kind in ("embeddings", "priors"))
    assert not [p for p in records[1]["manifests"] if p.endswith("manifest.json")]  # rank 0 writes them
    from semisam.teacher.stores import identity_of

    identity = identity_of(_tiny_teacher())
    for kind, cases in (("priors", all_cases), ("embeddings", embedded_cases)):
        store = CacheStore(root, kind)
        store.check(expected_manifest(cfg, kind, identity), "precompute")  # valid: raises otherwise
        assert store.missing(cases) == []
        assert not [p for p in store.dir.iterdir() if p.name.startswith(".")]  # no temporary file left

    # the semisam run: two refreshes by rank 0, the same bank and the same weights on both ranks
    assert [r["iterations"] for r in records] == [6, 6]
    assert [r["has_teacher"] for r in records] == [True, False]
    assert records[0]["bank"] == records[1]["bank"] and records[0]["bank"][:2] == [4, len(split.unlabeled)]
    banks = sorted((tmp_path / "run/pseudo_labels").glob("bank_*.npz"))
    assert [int(p.stem.split("_")[1]) for p in banks] == [2, 4]
    w0, w1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


# ---------------------------------------------------------------------------------------------- the commands
def _torchrun(tool: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(REPO / "tools" / tool),
        "--config",
        str(DEMO),
        "--no-progress",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_torchrun_train_command(phantom_root, tmp_path):
    proc = _torchrun("train.py", *tiny_overrides(phantom_root, tmp_path / "run", **{"method.name": "mean_teacher"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 6 iterations") == 1  # rank 0 reports
    assert "2 processes" in proc.stderr and "[rank 1]" not in proc.stderr  # rank 1 logs warnings only
    last = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert last["iteration"] == 6 and last["world_size"] == WORLD
    assert (tmp_path / "run/checkpoints/best.pt").is_file()


@pytest.mark.slow
def test_torchrun_precompute_command(phantom_root, tmp_path):
    overrides = tiny_overrides(phantom_root, tmp_path / "run", **{"teacher.cache_dir": str(tmp_path / "cache")})
    proc = _torchrun("precompute.py", "--splits", "labeled", "--embeddings-only", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("computed 6 cases") == 1, proc.stdout
    cfg = load_config(DEMO, overrides)
    store = CacheStore(cache_root(cfg), "embeddings")
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    assert store.read_manifest() is not None and store.missing(list(split.labeled)) == []
