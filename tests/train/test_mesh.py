"""Data-parallel placement: replicated state, batch split by rows, reads back on the host."""
import jax
import numpy as np
import pytest

from dwm_jax.train import mesh as mesh_lib


@pytest.fixture(scope="module")
def mesh():
  if jax.local_device_count() != 2:
    pytest.skip("needs the 2 host CPU devices forced by tests/conftest.py")
  return mesh_lib.data_mesh()


def test_replicated_round_trip_including_keys(mesh):
  tree = {"w": np.arange(6.0).reshape(2, 3), "n": np.int32(7), "key": jax.random.key(5)}
  placed = mesh_lib.put_replicated(tree, mesh)
  assert all(len(x.addressable_shards) == 2 for x in jax.tree.leaves(placed))
  assert placed["w"].sharding.is_fully_replicated
  host = mesh_lib.to_host({k: v for k, v in placed.items() if k != "key"})
  np.testing.assert_array_equal(host["w"], tree["w"])
  assert host["n"] == 7 and host["n"].shape == ()
  np.testing.assert_array_equal(jax.random.key_data(placed["key"]), jax.random.key_data(tree["key"]))


def test_batch_split_by_rows_and_first_row(mesh):
  x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
  batch = mesh_lib.put_batch({"x": x}, mesh)["x"]
  assert batch.shape == (4, 3)
  assert [s.index[0] for s in batch.addressable_shards] == [slice(0, 2), slice(2, 4)]
  np.testing.assert_array_equal(np.asarray(batch), x)
  np.testing.assert_array_equal(mesh_lib.first_row(batch), x[0])
  assert mesh_lib.put_batch({"x": batch}, mesh)["x"] is batch  # already placed: passed through
  with pytest.raises(ValueError, match="not divisible by the 2 local devices"):
    mesh_lib.put_batch({"x": x[:3]}, mesh)


def test_mesh_is_process_major_over_all_devices(mesh):
  assert mesh.axis_names == ("batch",)
  assert list(mesh.devices.flat) == sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
