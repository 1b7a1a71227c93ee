"""save_state / load_state: npz without pickle, bit-exact."""

import numpy as np
import pytest

from conftest import asarray, to_np
from lowrank_online import load_state, save_state


def test_nested_state_round_trips_bit_exactly(tmp_path, xp):
    rng = np.random.default_rng(0)
    arr = asarray(xp, rng.standard_normal((4, 3)), "float32")
    state = {"layer": {"A": {"eigenvectors": arr, "n": 3}, "method": "bkfac"}, "decay": 0.95, "on": True, "skip": None}
    save_state(tmp_path / "s.npz", state)
    back = load_state(tmp_path / "s.npz")
    assert back["layer"]["method"] == "bkfac" and back["decay"] == 0.95 and back["on"] is True
    assert back["layer"]["A"]["n"] == 3 and back["skip"] is None
    got = back["layer"]["A"]["eigenvectors"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, to_np(arr).astype(np.float32))


def test_objects_and_bad_keys_are_refused(tmp_path):
    with pytest.raises(TypeError, match="unsupported type"):
        save_state(tmp_path / "s.npz", {"x": object()})
    with pytest.raises(TypeError, match="object arrays"):
        save_state(tmp_path / "s.npz", {"x": np.array([None, 1])})
    with pytest.raises(ValueError, match="without '/'"):
        save_state(tmp_path / "s.npz", {"a/b": 1})


def test_loading_never_unpickles(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_state(tmp_path / "evil.npz")
