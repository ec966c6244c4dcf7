"""A GPU node (tts_engine: vibevoice) is refused before any change without a working NVIDIA driver,
and its weights are placed only when every file's sha256 is the one the inventory gives.

Both run the roles' own tasks with ansible-playbook against this machine (connection local): the
preflight reads `nvidia-smi` (this machine has none; a stand-in on PATH plays a driver that answers),
the weights go into folders under tmp_path."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_preflight import GOOD, preflight

ROOT = Path(__file__).resolve().parents[2]


def test_a_vibevoice_node_without_an_nvidia_driver_is_refused_before_any_change(tmp_path):
    code, out = preflight(tmp_path, tts_engine="vibevoice")
    assert code != 0 and "nvidia-smi did not run" in out and "Install the NVIDIA driver" in out, out[-3000:]


def gpu_node(tmp_path, monkeypatch, driver="550.54.15", wheels=("torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",),
             pin="torch==2.13.0"):
    """A node whose driver (a stand-in nvidia-smi) lists an H100, and a wheelhouse holding `wheels` (empty
    files: only the names are read) and a constraints.txt pinning `pin`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, {driver}, 81559 MiB'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "constraints.txt").write_text(f"flask==3.1.3\n{pin}\nnumpy==2.4.6\n")
    for wheel in wheels:
        (house / wheel).write_bytes(b"")
    return preflight(tmp_path, tts_engine="vibevoice", tts_wheelhouse=str(house))


def test_a_vibevoice_node_whose_driver_runs_the_wheelhouses_torch_passes(tmp_path, monkeypatch):
    code, out = gpu_node(tmp_path, monkeypatch)
    assert code == 0, out[-3000:]
    assert "NVIDIA H100" in out


def test_a_driver_too_old_for_the_cuda_build_of_torch_is_refused(tmp_path, monkeypatch):
    code, out = gpu_node(tmp_path, monkeypatch, driver="470.256.02")
    assert code != 0 and "the NVIDIA driver 470.256.02 cannot run torch-2.13.0+cu126" in out, out[-3000:]
    assert "CUDA 12 needs 525.60.13 or newer" in out


def test_an_old_driver_runs_an_older_cuda_build(tmp_path, monkeypatch):
    code, out = gpu_node(tmp_path, monkeypatch, driver="470.256.02",
                         wheels=("torch-2.13.0%2Bcu118-cp311-cp311-manylinux_2_28_x86_64.whl",))
    assert code == 0, out[-3000:]


def test_a_wheelhouse_without_the_pinned_cuda_build_of_torch_is_refused(tmp_path, monkeypatch):
    # only the CPU build, a CUDA build of another version, one for another Python: none is installable
    code, out = gpu_node(tmp_path, monkeypatch, wheels=("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                                                        "torch-2.12.1+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",
                                                        "torch-2.13.0+cu126-cp312-cp312-manylinux_2_28_x86_64.whl"))
    assert code != 0 and "holds no CUDA build of torch 2.13.0 for cp311" in out, out[-3000:]


def test_two_cuda_builds_of_the_pinned_torch_are_refused_as_ambiguous(tmp_path, monkeypatch):
    code, out = gpu_node(tmp_path, monkeypatch, wheels=("torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",
                                                        "torch-2.13.0+cu118-cp311-cp311-manylinux_2_28_x86_64.whl"))
    assert code != 0 and "(one expected)" in out, out[-3000:]


def test_a_wheelhouse_whose_constraints_pin_no_torch_is_refused(tmp_path, monkeypatch):
    code, out = gpu_node(tmp_path, monkeypatch, pin="")
    assert code != 0 and "has no constraints.txt pinning torch" in out, out[-3000:]


MODEL_PLAY = """
- hosts: tts_nodes
  connection: local
  gather_facts: false
  roles: [tts]
  tasks:
    - ansible.builtin.include_role:
        name: tts_app
        tasks_from: model
"""


def place(tmp_path, checksums):
    src, dest = tmp_path / "weights", tmp_path / "node-model"
    (tmp_path / "play.yml").write_text(MODEL_PLAY)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "children": {"tts_nodes": {"hosts": {"localhost": None}}},
        "vars": {"tts_app_vibevoice_model_src": str(src), "tts_app_vibevoice_model_dir": str(dest),
                 "tts_app_vibevoice_model_sha256": checksums,
                 "tts_storage_uid": GOOD["tts_storage_uid"]}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_LOG_PATH", None)
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                          str(tmp_path / "play.yml")], capture_output=True, text=True, env=env, timeout=120)
    return res.returncode, res.stdout + res.stderr, dest


def weights(tmp_path):
    src = tmp_path / "weights"
    src.mkdir()
    files = {"config.json": b'{"model_type": "vibevoice"}', "model.safetensors": os.urandom(4096)}
    for name, body in files.items():
        (src / name).write_bytes(body)
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def test_weights_with_their_checksums_are_placed(tmp_path):
    sums = weights(tmp_path)
    code, out, dest = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.iterdir()} == sums


def test_a_checksum_mismatch_is_refused_named_and_nothing_is_placed(tmp_path):
    sums = weights(tmp_path)
    sums["model.safetensors"] = "0" * 64
    code, out, dest = place(tmp_path, sums)
    assert code != 0 and "model.safetensors" in out and "not the " + "0" * 64 + " given" in out, out[-3000:]
    assert not dest.exists() or not any(dest.iterdir())


def test_a_missing_weights_file_is_refused(tmp_path):
    sums = weights(tmp_path)
    sums["tokenizer.json"] = "1" * 64
    code, out, dest = place(tmp_path, sums)
    assert code != 0 and "tokenizer.json" in out and "missing" in out, out[-3000:]
    assert not dest.exists() or not any(dest.iterdir())


def test_weights_already_in_place_need_no_source_and_a_changed_one_is_fetched_again(tmp_path):
    """upgrade.yml from ctl: the weights' folder of the first deploy is not there. Files in place with
    their checksums need nothing; a file changed on the node is needed again (and refused without its
    source)."""
    sums = weights(tmp_path)
    code, out, dest = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    for f in (tmp_path / "weights").iterdir():
        f.unlink()
    (tmp_path / "weights").rmdir()
    code, out, _ = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    (dest / "config.json").write_text("{}")
    code, out, _ = place(tmp_path, sums)
    assert code != 0 and "config.json in" in out and "missing" in out, out[-3000:]
