"""Checkpoints keep the CUDA random generator (dropout on a GPU resumes exactly), and `noisypref run`
leaves a launch's process group at its end (issue 28). tests/test_gpu.py resumes a run with dropout on
CUDA; here the wiring, on the CPU."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist

import noisypref.benchmark.engine.checkpoint as checkpoint_module
from noisypref.benchmark.engine import distributed


def test_the_cpu_generator_round_trips_and_no_cuda_state_is_kept_without_cuda() -> None:
    torch.manual_seed(3)
    states = checkpoint_module.rng_states()
    expected = torch.rand(4)
    torch.rand(10)  # the generator moves on
    checkpoint_module.restore_rng_states(states)
    assert torch.equal(torch.rand(4), expected)
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert set(states) == {"torch_rng"}


def test_the_cuda_generator_is_saved_and_restored_when_cuda_is_in_use(monkeypatch) -> None:
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    states = checkpoint_module.rng_states()
    assert torch.equal(states["cuda_rng"], cuda_state) and torch.equal(states["torch_rng"], torch.get_rng_state())
    checkpoint_module.restore_rng_states(states)
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state)
    checkpoint_module.restore_rng_states({"torch_rng": torch.get_rng_state()})  # a checkpoint written on the CPU
    assert len(restored) == 1


def test_a_checkpoint_holds_the_generators(tmp_path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())

    class Stateless:
        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    torch.manual_seed(5)
    checkpoint_module.save_checkpoint(tmp_path / "checkpoint.pt", 7, model, optimizer, Stateless())
    expected = torch.rand(3)
    assert checkpoint_module.load_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, Stateless()) == 7
    assert torch.equal(torch.rand(3), expected)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert "torch_rng" in saved and ("cuda_rng" in saved) == (torch.cuda.is_available() and torch.cuda.is_initialized())


def test_end_launch_leaves_the_process_group_and_can_be_called_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    distributed._patient = dist.new_group(backend="gloo")
    try:
        distributed.end_launch()
        assert not dist.is_initialized() and distributed.patient_group() is None
        distributed.end_launch()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
