import random

import numpy as np
import pytest
import torch

from semisam.engine.rng import capture_rng, restore_rng
from semisam.student.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "rng": capture_rng()})
    expected = _draws()
    _draws()
    state = torch.load(path, weights_only=True)  # nothing in it needs unpickling of arbitrary objects
    restore_rng(state["rng"])
    assert _draws() == expected


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {"a": 1}})
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "config": {"a": 1}})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))


def test_truncated_missing_and_foreign_files_are_named(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(100)}, "config": {}})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a semisam checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_other_architecture_is_a_clear_error(tmp_path):
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))
    big = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3))
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": small.state_dict(), "config": {}, "model_info": {"arch": "small"}})
    state = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"best.pt.*another architecture.*shape mismatch"):
        load_model_weights(big, state, path)
    other = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(other, state, path)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))
    load_model_weights(fresh, state, path)
    assert torch.equal(fresh[0].weight, small[0].weight)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from semisam.utils import atomic_write_text

    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "x")
    plain = tmp_path / "b.txt"
    plain.write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask
