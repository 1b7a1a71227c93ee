"""A PyTorch nn.Linear network trained with the preconditioner fed by hooks, on torch tensors."""

import importlib.util
import pathlib

import pytest

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
