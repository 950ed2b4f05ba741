"""The pmapped train step with in-step mask sampling (2 host CPU devices, see conftest)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking, objectives, patching
from dwm_jax.config import base_config
from dwm_jax.train import ema, state as state_lib, step as step_lib

TOTAL, PER_EPOCH = 40, 10
BATCH = 8
KEY = jax.random.key(7)


def tiny_config(objective: str = "m2d", mask: str = "dwm"):
  c = base_config()
  c.model.name, c.model.input_shape = "tiny", (32, 64)
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 1, 2, 64
  c.objective.name = objective
  c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
  c.objective.ema_decay_start, c.objective.ema_decay_end = 0.99, 0.999  # visible in few steps
  c.mask.name = mask
  c.batch_size = BATCH
  c.optim.base_lr = 0.1  # lr = 0.1 * 8 / 256 ~ 3e-3
  c.optim.warmup_epochs = 0.0
  return c


def structured_logmels(seed: int, batch: int = BATCH) -> np.ndarray:
  """Log-mel-like ``[B, 32, 64]``: a few harmonic bands switched on and off over time, on a
  quiet noisy floor (sparse along frequency, as real audio is)."""
  rng = np.random.default_rng(seed)
  f = np.arange(32)[:, None]
  out = np.empty((batch, 32, 64), np.float32)
  for b in range(batch):
    x = rng.normal(-1.0, 0.1, (32, 64))
    f0 = rng.integers(2, 8)
    on = np.zeros(64)
    start = rng.integers(0, 32)
    on[start:start + rng.integers(16, 48)] = 1.0
    for h in range(1, 4):
      x += 2.0 / h * np.exp(-0.5 * ((f - h * f0) / 0.7) ** 2) * on[None, :]
    out[b] = x
  return out


def sampler(config):
  """Jitted ``sample_mask`` for ``config`` (the same function the step calls)."""
  obj = objectives.from_config(config)
  return jax.jit(functools.partial(step_lib.sample_mask, config, objective=obj))


def local_masks(config, key, step, x, params, hint, num_devices=2):
  """The masks each device samples at ``step`` (devices see consecutive batch shards)."""
  sample = sampler(config)
  patches = patching.patchify(jnp.asarray(x), tuple(config.model.patch_size))
  shards = np.split(np.asarray(patches), num_devices)
  return jnp.concatenate([sample(step_lib.step_keys(key, step, d)[0], jnp.asarray(p),
                                 jnp.float32(hint), params=params)
                          for d, p in enumerate(shards)])


@pytest.fixture(scope="module")
def two_devices():
  if jax.local_device_count() != 2:
    pytest.skip("needs the 2 host CPU devices forced by tests/conftest.py")


@pytest.fixture(scope="module")
def informed_step(two_devices):
  """Pmapped M2D step with the informed strategy (extra encoder pass), plus a trace counter."""
  c = tiny_config("m2d", "informed")
  traces = []
  fn = step_lib.make_pmapped_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH,
                                        on_trace=lambda: traces.append(1))
  return c, fn, traces


@pytest.fixture(scope="module")
def reference_step():
  """Single-device M2D step fed precomputed masks (no collectives), jitted once."""
  c = tiny_config("m2d", "dwm")
  return jax.jit(step_lib.make_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH,
                                          precomputed_mask=True, axis_name=None))


@functools.lru_cache(maxsize=None)
def _initial_state(objective: str, seed: int):
  # Strategy-independent: one init (one compile) per objective and seed for the whole module.
  return state_lib.create_train_state(tiny_config(objective), jax.random.key(seed),
                                      total_steps=TOTAL, steps_per_epoch=PER_EPOCH)


def fresh_state(c, seed=0):
  """A copy of the initial state of ``c``'s objective (copies survive donation)."""
  return jax.tree.map(jnp.copy, _initial_state(c.objective.name, seed))


def assert_trees_close(got, want):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    if "qkv" in jax.tree_util.keystr(path) and a.ndim == 1:
      # The key bias has an exactly-zero gradient (softmax ignores a constant per query), so
      # its float noise (~1e-10) is what Adam's first step normalises: compare q and v only.
      w = a.shape[0] // 3
      a, b = np.r_[a[:w], a[2 * w:]], np.r_[b[:w], b[2 * w:]]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_pmapped_step_equals_single_device_reference(two_devices, reference_step):
  c = tiny_config("m2d", "dwm")
  p_step = step_lib.make_pmapped_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH)
  state0 = fresh_state(c)
  x = structured_logmels(0)
  hint = 0.3
  rep, metrics = p_step(step_lib.replicate(state0), step_lib.shard({"logmel": x}), KEY, hint)
  masks = local_masks(c, KEY, 0, x, state0.params, hint)
  ref, ref_metrics = reference_step(state0, {"logmel": jnp.asarray(x), "mask": masks}, KEY,
                                    jnp.float32(hint))
  got = step_lib.unreplicate(rep)
  assert int(got.step) == 1
  assert_trees_close(got.params, ref.params)
  assert_trees_close(got.target_params, ref.target_params)
  for name in ("loss", "grad_norm", "mask/dispersion_masked", "mask/frac_row_0"):
    np.testing.assert_allclose(metrics[name][0], ref_metrics[name], rtol=1e-5)
    np.testing.assert_allclose(metrics[name][1], metrics[name][0])  # pmean: same everywhere
  # The parameters moved (the comparison above is not between two untouched states).
  delta = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(got.params), jax.tree.leaves(state0.params)))
  assert delta > 1e-4

  # EMA: target <- d * target + (1 - d) * online (new online params), d = schedule at step 0.
  d = ema.ema_decay(0, TOTAL, 0.99, 0.999, "cosine")
  assert float(metrics["ema_decay"][0]) == pytest.approx(float(d))
  obj = objectives.from_config(c)
  want = ema.ema_update(state0.target_params, obj.target_params_of(got.params), d)
  for a, b, t0 in zip(jax.tree.leaves(got.target_params), jax.tree.leaves(want),
                      jax.tree.leaves(state0.target_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  moved = [float(jnp.abs(a - t0).max()) for a, t0 in
           zip(jax.tree.leaves(got.target_params), jax.tree.leaves(state0.target_params))]
  assert max(moved) > 0


def test_masks_differ_across_devices_and_steps_and_repeat_per_key(two_devices):
  c = tiny_config("m2d", "dwm")
  sample = sampler(c)
  patches = patching.patchify(jnp.asarray(structured_logmels(1, 4)), (16, 16))
  # Random masking, so the key alone decides the mask (dwm would concentrate on the bands).
  c_rand = tiny_config("m2d", "random")
  sample = sampler(c_rand)

  def mask(step, device, key=KEY):
    return np.asarray(sample(step_lib.step_keys(key, step, device)[0], patches, jnp.float32(0)))

  m00, m01, m10 = mask(0, 0), mask(0, 1), mask(1, 0)
  assert not np.array_equal(m00, m01) and not np.array_equal(m00, m10)
  np.testing.assert_array_equal(mask(0, 0), m00)
  assert not np.array_equal(mask(0, 0, jax.random.key(8)), m00)
  k = patching.num_masked(8, 0.7)
  assert (m00.sum(1) == k).all()


def test_no_recompilation_while_hint_changes_and_metrics(informed_step):
  c, p_step, traces = informed_step
  from flax import jax_utils  # the launcher's usual way to replicate: must not add a trace
  state = jax_utils.replicate(fresh_state(c))
  hints = [1.0, 0.7, 0.31, 0.0]
  for i, h in enumerate(hints):
    batch = step_lib.shard({"logmel": structured_logmels(10 + i)})
    state, metrics = p_step(state, batch, jax.random.fold_in(KEY, i), masking.hint_schedule(
        60 + i, 100, start_epoch=50, k=2.0) if h is None else h)
    assert float(metrics["hint"][0]) == pytest.approx(h)
  assert len(traces) == 1
  got = step_lib.unreplicate(state)
  assert int(got.step) == len(hints)
  for name, v in metrics.items():
    assert np.isfinite(np.asarray(v)).all(), name
  expected = {"loss", "grad_norm", "param_norm", "update_norm", "lr", "ema_decay", "hint",
              "mask/dispersion_masked", "mask/dispersion_visible", "mask/frac_row_0",
              "mask/frac_row_1"}
  assert expected <= set(metrics)
  # Every row's masked fraction averages to K / N (exact-count masks).
  rows = np.mean([metrics["mask/frac_row_0"][0], metrics["mask/frac_row_1"][0]])
  assert rows == pytest.approx(patching.num_masked(8, 0.7) / 8)
  assert float(metrics["lr"][0]) == pytest.approx(0.1 * BATCH / 256 *
                                                  0.5 * (1 + np.cos(np.pi * 3 / TOTAL)), rel=1e-4)


def test_same_seed_reproduces_the_run(informed_step):
  c, p_step, _ = informed_step

  def run(seed):
    state = step_lib.replicate(fresh_state(c, seed))
    for i in range(2):
      state, _ = p_step(state, step_lib.shard({"logmel": structured_logmels(i)}), KEY, 0.5)
    return step_lib.unreplicate(state).params

  a, b, other = run(0), run(0), run(1)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(other)))


def test_step_rejects_unknown_mask_options():
  c = tiny_config("m2d", "dwm")
  c.mask.options.metric_typo = "mad"
  with pytest.raises(ValueError, match="unknown option"):
    step_lib.make_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH)


def train_losses(step_fn, config, steps: int = 40) -> list[float]:
  """Trains a fresh tiny model with the step fed ``config``'s masks; returns the losses."""
  state = fresh_state(config)
  sample = sampler(config)
  data = [structured_logmels(100 + i) for i in range(4)]
  losses = []
  for i in range(steps):
    x = jnp.asarray(data[i % len(data)])
    patches = patching.patchify(x, (16, 16))
    mask = sample(step_lib.step_keys(KEY, i, 0)[0], patches, jnp.float32(0), params=state.params)
    state, m = step_fn(state, {"logmel": x, "mask": mask}, KEY, jnp.float32(0))
    losses.append(float(m["loss"]))
  return losses


def falls(losses) -> bool:
  """The last 5 steps average at least 15% below the untrained model's loss (step 0)."""
  return np.mean(losses[-5:]) < 0.85 * losses[0]


@pytest.mark.parametrize("strategy", masking.names())
def test_m2d_loss_falls_for_every_strategy(reference_step, strategy):
  losses = train_losses(reference_step, tiny_config("m2d", strategy))
  assert np.isfinite(losses).all()
  assert falls(losses), (strategy, losses[:3], losses[-5:])


@pytest.fixture(scope="module")
def mae_reference_step():
  c = tiny_config("mae", "dwm")
  return jax.jit(step_lib.make_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH,
                                          precomputed_mask=True, axis_name=None))


@pytest.mark.parametrize("strategy", masking.names())
def test_mae_loss_falls_for_every_strategy(mae_reference_step, strategy):
  losses = train_losses(mae_reference_step, tiny_config("mae", strategy))
  assert np.isfinite(losses).all()
  assert falls(losses), (strategy, losses[:3], losses[-5:])


def test_mae_in_step_sampling_trains(two_devices):
  c = tiny_config("mae", "dwm")
  p_step = step_lib.make_pmapped_train_step(c, total_steps=TOTAL, steps_per_epoch=PER_EPOCH)
  state = step_lib.replicate(fresh_state(c))
  losses = []
  for i in range(40):
    state, m = p_step(state, step_lib.shard({"logmel": structured_logmels(100 + i % 4)}), KEY,
                      0.0)
    losses.append(float(m["loss"][0]))
  assert step_lib.unreplicate(state).target_params is None
  assert falls(losses), (losses[:3], losses[-5:])
