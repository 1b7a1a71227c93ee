"""save_state / load_state: npz without pickle, bit-exact."""

import warnings

import numpy as np
import pytest
from _helpers import asarray, to_np

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


# --------------------------------------------------------------------------------------------
# what cannot be stored, what comes back, damaged files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"n": 2**70}, "'n': int .* would need pickle"),
        ({"g": {"big": -(2**65)}}, "'g/big': int"),
        ({"l": [1, 2]}, "'l' has unsupported type list"),
        ({"t": (np.ones(2),)}, "'t' has unsupported type tuple"),
        ({"b": b"bytes"}, "'b' has unsupported type bytes"),
    ],
)
def test_values_that_need_pickle_are_refused_naming_the_key(tmp_path, state, match):
    with pytest.raises(TypeError, match=match):
        save_state(tmp_path / "s.npz", state)
    assert not (tmp_path / "s.npz").exists()


def test_reserved_and_bad_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_state(tmp_path / "s.npz", {"__save_state__": 1})
    with pytest.raises(ValueError, match="non-empty strings"):
        save_state(tmp_path / "s.npz", {"": 1})
    with pytest.raises(TypeError, match="`state` must be a dict"):
        save_state(tmp_path / "s.npz", [("a", 1)])


def test_none_and_empty_groups_round_trip(tmp_path):
    state = {"a": None, "empty": {}, "g": {"none": None, "deeper": {"empty": {}}, "x": np.arange(3.0)}, "n": 0}
    save_state(tmp_path / "s.npz", state)
    back = load_state(tmp_path / "s.npz")
    assert back["a"] is None and back["empty"] == {} and back["n"] == 0
    assert back["g"]["none"] is None and back["g"]["deeper"] == {"empty": {}}
    np.testing.assert_array_equal(back["g"]["x"], np.arange(3.0))
    save_state(tmp_path / "t.npz", back)  # and again: a second round trip changes nothing
    again = load_state(tmp_path / "t.npz")
    assert again.keys() == back.keys() and again["g"]["deeper"] == {"empty": {}}


def _raw(state):
    import io

    buffer = io.BytesIO()
    save_state(buffer, state)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage",
    ["empty", "garbage", "truncated to 40 bytes", "truncated to half", "last bytes cut", "bytes zeroed", "npy file"],
)
def test_damaged_files_are_refused_naming_the_path(tmp_path, damage):
    raw = _raw({"x": np.arange(1000.0), "y": {"z": np.ones(3)}})
    path = tmp_path / "state.npz"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not an archive at all" * 10)
    elif damage == "truncated to 40 bytes":
        path.write_bytes(raw[:40])
    elif damage == "truncated to half":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "last bytes cut":
        path.write_bytes(raw[:-30])
    elif damage == "bytes zeroed":
        broken = bytearray(raw)
        broken[200:300] = bytes(100)  # inside the first member's data: its CRC fails
        path.write_bytes(bytes(broken))
    else:
        np.save(path, np.ones(3))
        path = tmp_path / "state.npz.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ResourceWarning: the file is closed
        with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
            load_state(path)


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.npz")


def test_entries_that_clash_are_refused(tmp_path):
    np.savez(tmp_path / "clash.npz", **{"a": np.ones(2), "a/b": np.ones(2)})
    with pytest.raises(ValueError, match="not a group"):
        load_state(tmp_path / "clash.npz")
