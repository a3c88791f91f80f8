"""Provenance written beside every run and result: the commit of the code a process loaded and the machine."""

import subprocess

import torch

from semisam import version


def test_the_commit_is_the_one_the_process_loaded_not_a_later_one(monkeypatch):
    first = version.git_commit()

    def a_later_checkout(command, **kwargs):  # rev-parse names a new commit, status finds a clean tree
        out = "f" * 40 + "\n" if "rev-parse" in command else ""
        return subprocess.CompletedProcess(command, 0, stdout=out, stderr="")

    monkeypatch.setattr(subprocess, "run", a_later_checkout)
    assert version.git_commit() == first  # read once per process
    version.git_commit.cache_clear()
    try:
        assert version.git_commit() == "f" * 40  # what a fresh process would read
    finally:
        version.git_commit.cache_clear()


def test_the_machine_line_names_the_cpu_and_whether_it_has_native_bf16():
    info = version.environment_info()
    cpu = info["cpu"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability() and cpu["cores"] >= 1
    line = version.describe_machine(info)
    assert cpu["capability"] in line and f"{cpu['cores']} cores" in line
    assert ("no native bf16" in line) == (not cpu["native_bf16"])
    assert cpu["native_bf16"] == version.cpu_has_native_bf16()  # the one rule the teacher's precision follows
    gpu = version.describe_machine({**info, "cuda_device": "NVIDIA H200"})
    assert gpu.startswith("NVIDIA H200; CPU ")
