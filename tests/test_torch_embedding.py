"""A PyTorch nn.Linear network trained with the preconditioner fed by hooks, on torch tensors."""

import importlib.util
import pathlib

import pytest

from lowrank_online.curvature import METHODS

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")


def _example():
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "torch_embedding.py"
    spec = importlib.util.spec_from_file_location("torch_embedding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["bkfac", "kfac"])
def test_torch_training_with_hooks_stays_in_torch_and_learns(method):
    losses, accs, pre = _example().train(method, epochs=2)
    assert losses[-1] < losses[0]
    assert accs[-1] > 0.85
    for name in pre.layers:
        for side in ("A", "G"):
            held = getattr(pre.layer_state(name).state, side).eigenvectors
            assert isinstance(held, torch.Tensor) and held.dtype == torch.float32


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_for_one_epoch_in_the_example(method):
    import math

    losses, accs, pre = _example().train(method, epochs=1)
    assert math.isfinite(losses[0]) and accs[0] > 0.5, (losses, accs)
    info = pre.layer_state(pre.layers[0])
    assert info.method == method and info.skipped_updates == 0
    assert all(isinstance(v, torch.Tensor) for v in info.eigenvalues.values())
