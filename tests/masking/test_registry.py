"""The registry and ``sample``: names, option validation, bad input fails with a clear error."""
import jax
import jax.numpy as jnp
import re

import pytest

from dwm_jax import masking

EXPECTED = {"block", "dwm", "informed", "inverse_block", "random", "time", "time_frequency"}


def test_every_strategy_is_registered():
  assert set(masking.names()) == EXPECTED


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown masking strategy 'bogus'") as err:
    masking.sample("bogus", jax.random.key(0), jnp.zeros((1, 190, 4)), grid=(5, 38), ratio=0.7)
  for name in EXPECTED:
    assert name in str(err.value)


@pytest.mark.parametrize("name,valid", [("dwm", "metric, probabilistic"),
                                        ("inverse_block", "adjust, block_size, full_hint"),
                                        ("random", "(none)")])
def test_unknown_option_lists_valid_options(name, valid):
  with pytest.raises(ValueError, match=f"unknown option.*blocksize.*valid: {re.escape(valid)}"):
    masking.sample(name, jax.random.key(0), jnp.zeros((1, 190, 4)), grid=(5, 38), ratio=0.7,
                   blocksize=3)


def test_defaults_are_resolved_and_overridable():
  assert masking.resolve_options("inverse_block", {}) == {
      "block_size": 5, "adjust": 0.07, "full_hint": False}
  assert masking.resolve_options("dwm", {"metric": "variance"})["metric"] == "variance"


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.0), "mask ratio must be in"),
    (dict(ratio=1.0), "mask ratio must be in"),
    (dict(ratio=1e-17), "0 < K < N"),   # keeps all 190
    (dict(ratio=0.999), "0 < K < N"),   # keeps none
    (dict(grid=(5, 37)), "N=190 but grid"),
    (dict(grid=(5,)), "grid must be a"),
    (dict(grid=(0, 38)), "grid sizes must be positive"),
])
def test_bad_arguments_fail_clearly(kwargs, match):
  args = dict(grid=(5, 38), ratio=0.7) | kwargs
  with pytest.raises(ValueError, match=match):
    masking.sample("random", jax.random.key(0), jnp.zeros((2, 190, 4)), **args)


def test_patches_must_be_3d():
  with pytest.raises(ValueError, match=r"patches must be \[B, N, P\]"):
    masking.sample("random", jax.random.key(0), jnp.zeros((190, 4)), grid=(5, 38), ratio=0.7)


def test_registering_a_name_twice_fails():
  with pytest.raises(ValueError, match="registered twice"):
    masking.register("random")(lambda *a, **k: None)
