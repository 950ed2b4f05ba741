"""The jitted train step over the data mesh, with in-step mask sampling and in-step schedules
(2 host CPU devices, see conftest)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking, patching
from dwm_jax.config import base_config
from dwm_jax.train import ema, mesh as mesh_lib, setup as setup_lib, state as state_lib
from dwm_jax.train import step as step_lib


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
  c.mask.hint.start_epoch = 1.0  # h = 1 for the first 10 steps, then falls
  c.batch_size = BATCH
  c.total_steps, c.steps_per_epoch = TOTAL, PER_EPOCH
  c.optim.base_lr = 0.1  # lr = 0.1 * 8 / 256 ~ 3e-3
  c.optim.warmup_epochs = 0.0
  return c


@functools.lru_cache(maxsize=None)
def make_setup(objective: str = "m2d", mask: str = "dwm") -> setup_lib.RunSetup:
  return setup_lib.build(tiny_config(objective, mask), dataset_size=BATCH * PER_EPOCH)


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


@functools.lru_cache(maxsize=None)
def _init_fn(objective: str):
  # Strategy-independent, and the seed is an argument: one compile per objective.
  setup = make_setup(objective)
  return jax.jit(lambda k: state_lib.create_train_state(setup, k))


@functools.lru_cache(maxsize=None)
def _initial_state(objective: str, seed: int):
  return jax.device_get(_init_fn(objective)(jax.random.key(seed)))


def fresh_state(setup, mesh, seed=0):
  """The initial state of ``setup``'s objective, replicated over ``mesh`` (a fresh copy)."""
  return mesh_lib.put_replicated(_initial_state(setup.objective.name, seed), mesh)


@functools.lru_cache(maxsize=None)
def step_on(objective: str, mask: str, num_devices: int):
  """``(setup, mesh, jitted step)`` on the first ``num_devices`` CPU devices."""
  setup = make_setup(objective, mask)
  mesh = mesh_lib.data_mesh(jax.devices()[:num_devices])
  return setup, mesh, step_lib.jit_train_step(setup, mesh)


def run(objective, mask, num_devices, steps, seed=0, data=structured_logmels):
  setup, mesh, fn = step_on(objective, mask, num_devices)
  state = fresh_state(setup, mesh, seed)
  key = mesh_lib.put_replicated(KEY, mesh)
  out = []
  for i in range(steps):
    batch = mesh_lib.put_batch({"logmel": data(i)}, mesh)
    state, metrics, mask_out = fn(state, batch, key)
    out.append((jax.device_get(metrics), np.asarray(mask_out)))
  return mesh_lib.to_host(state), out


@pytest.fixture(scope="module")
def two_devices():
  if jax.local_device_count() != 2:
    pytest.skip("needs the 2 host CPU devices forced by tests/conftest.py")


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    if "qkv" in jax.tree_util.keystr(path) and a.ndim == 1:
      # The key bias has an exactly-zero gradient (softmax ignores a constant per query), so
      # its float noise (~1e-10) is what Adam's first step normalises: compare q and v only.
      w = a.shape[0] // 3
      a, b = np.r_[a[:w], a[2 * w:]], np.r_[b[:w], b[2 * w:]]
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_two_devices_equal_one_device(two_devices):
  """The global-batch step: identical masks, and the same training up to float reduction order."""
  one, one_out = run("m2d", "dwm", 1, 3)
  two, two_out = run("m2d", "dwm", 2, 3)
  for (m1, mask1), (m2, mask2) in zip(one_out, two_out):
    np.testing.assert_array_equal(mask1, mask2)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    assert m1["hint"] == m2["hint"] and m1["lr"] == m2["lr"]
  assert_trees_close(two.params, one.params, rtol=1e-4, atol=1e-5)
  assert_trees_close(two.target_params, one.target_params, rtol=1e-4, atol=1e-5)
  assert int(two.step) == 3 and int(two.first_nonfinite) == -1
  delta = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(two.params), jax.tree.leaves(_initial_state("m2d", 0).params)))
  assert delta > 1e-4  # the comparison above is not between two untouched states


def test_step_trains_on_the_mask_it_returns_with_in_step_schedules(two_devices):
  setup, mesh, fn = step_on("m2d", "dwm", 2)
  state0 = _initial_state("m2d", 0)
  state = fresh_state(setup, mesh)
  key = mesh_lib.put_replicated(KEY, mesh)
  x = structured_logmels(0)
  for step in range(12):  # past start_epoch: hint < 1 from step 10 on
    params = mesh_lib.to_host(state.params)  # before the step donates the state
    new, metrics, mask = fn(state, mesh_lib.put_batch({"logmel": x}, mesh), key)
    hint = float(setup.hint(step))
    assert float(metrics["hint"]) == pytest.approx(hint)
    assert float(metrics["lr"]) == pytest.approx(float(setup.lr_schedule(step)), rel=1e-6)
    assert float(metrics["ema_decay"]) == pytest.approx(float(setup.ema_decay(step)))
    patches = patching.patchify(jnp.asarray(x), setup.patch_size)
    want = setup.sample_mask(step_lib.step_keys(KEY, step)[0], patches, hint, params)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(want))
    assert (np.asarray(mask).sum(1) == setup.num_masked).all()
    state = new
  assert float(setup.hint(11)) < 1.0
  # EMA of step 0, checked by hand: target <- d * target + (1 - d) * online.
  first, _, _ = fn(fresh_state(setup, mesh), mesh_lib.put_batch({"logmel": x}, mesh), key)
  first = mesh_lib.to_host(first)
  d = ema.ema_decay(0, TOTAL, 0.99, 0.999, "cosine")
  want = ema.ema_update(state0.target_params, setup.objective.target_params_of(first.params), d)
  assert_trees_close(first.target_params, want, rtol=1e-6, atol=1e-7)


def test_masks_differ_across_steps_and_repeat_per_key():
  setup = make_setup("m2d", "random")
  patches = patching.patchify(jnp.asarray(structured_logmels(1, 4)), (16, 16))
  sample = jax.jit(lambda k: setup.sample_mask(k, patches, jnp.float32(0)))
  m0, m1 = (np.asarray(sample(step_lib.step_keys(KEY, s)[0])) for s in (0, 1))
  assert not np.array_equal(m0, m1)
  np.testing.assert_array_equal(np.asarray(sample(step_lib.step_keys(KEY, 0)[0])), m0)
  assert not np.array_equal(np.asarray(sample(step_lib.step_keys(jax.random.key(8), 0)[0])), m0)
  assert not np.array_equal(m0[0], m0[1])  # rows of one batch get their own draws


def test_compiled_once_while_the_hint_changes(two_devices):
  """Informed (an extra encoder pass in the step): one trace for a run whose hint changes."""
  setup = make_setup("m2d", "informed")
  mesh = mesh_lib.data_mesh()
  traces = []
  real = step_lib.train_step

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  step_lib.train_step = counting
  try:
    fn = step_lib.jit_train_step(setup, mesh)
    state = fresh_state(setup, mesh)
    key = mesh_lib.put_replicated(KEY, mesh)
    hints = []
    for i in range(12):
      state, metrics, _ = fn(state, mesh_lib.put_batch({"logmel": structured_logmels(i)}, mesh),
                             key)
      hints.append(float(metrics["hint"]))
  finally:
    step_lib.train_step = real
  assert len(traces) == 1
  assert hints[0] == 1.0 and hints[-1] < hints[-2] < 1.0
  for name, v in metrics.items():
    assert np.isfinite(np.asarray(v)).all(), name
  expected = {"loss", "grad_norm", "param_norm", "update_norm", "lr", "ema_decay", "hint",
              "mask/dispersion_masked", "mask/dispersion_visible", "mask/frac_row_0",
              "mask/frac_row_1"}
  assert expected <= set(metrics)
  rows = np.mean([metrics["mask/frac_row_0"], metrics["mask/frac_row_1"]])
  assert rows == pytest.approx(patching.num_masked(8, 0.7) / 8)


def test_nonfinite_loss_is_recorded_on_the_device(two_devices):
  def data(i):
    x = structured_logmels(i)
    return x * np.nan if i == 2 else x
  state, _ = run("m2d", "dwm", 2, 4, data=data)  # the step compiled for the tests above
  assert int(state.first_nonfinite) == 3  # the step count at which it happened


def test_same_seed_reproduces_the_run(two_devices):
  # M2D: its target's own initialisation and the in-step masks are random too.
  a, _ = run("m2d", "dwm", 2, 2)
  b, _ = run("m2d", "dwm", 2, 2)
  other, _ = run("m2d", "dwm", 2, 2, seed=1)
  for x, y in zip(jax.tree.leaves((a.params, a.target_params)),
                  jax.tree.leaves((b.params, b.target_params))):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                       jax.tree.leaves(other.params)))


@pytest.mark.usefixtures("gpu_variant")
@pytest.mark.parametrize("objective,mask,accum", [("m2d", "dwm", 1), ("mae", "block", 2)])
def test_compiled_for_gpus_the_step_never_waits_on_the_host(objective, mask, accum):
  # XLA:GPU copies a cond's predicate, and that of a loop of unknown trip count, to the host and
  # waits for the stream: none may be left in the step (block's stop per chunk of attempts is
  # the one, documented, exception). Checked on the step's program as compiled with the GPU
  # branches of the masks (forced on this CPU), gradient accumulation (optax.MultiSteps) too.
  c = tiny_config(objective, mask)
  c.optim.accum_steps = accum
  setup = setup_lib.build(c, dataset_size=BATCH * PER_EPOCH)
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  args = (jax.eval_shape(lambda k: state_lib.create_train_state(setup, k), KEY),
          {"logmel": jax.ShapeDtypeStruct((BATCH, 32, 64), jnp.float32)}, KEY)
  hlo = step_lib.jit_train_step(setup, mesh).lower(*args).compile().as_text()
  whiles = [line for line in hlo.splitlines() if " while(" in line]
  unknown = [line for line in whiles if "known_trip_count" not in line]
  assert whiles and " conditional(" not in hlo
  assert len(unknown) == (1 if mask == "block" else 0), unknown


def test_setup_rejects_unknown_mask_options():
  c = tiny_config("m2d", "dwm")
  c.mask.options.metric_typo = "mad"
  with pytest.raises(ValueError, match="unknown option"):
    setup_lib.build(c, dataset_size=80)


@functools.lru_cache(maxsize=None)
def sampler(strategy: str):
  """``strategy``'s jitted mask sampler. Both objectives' setups build the same one (the same
  encoder config scores ``informed``'s features), so it is compiled once for both."""
  return jax.jit(make_setup("m2d", strategy).sample_mask)


def train_losses(objective, strategy, steps: int = 40):
  """Trains a fresh tiny model on one device with ``strategy``'s masks fed to the step:
  ``(losses, final host state)``."""
  setup, mesh, fn = step_on(objective, "dwm", 1)  # one compiled step serves every strategy
  state = fresh_state(setup, mesh)
  key = mesh_lib.put_replicated(KEY, mesh)
  data = [structured_logmels(100 + i) for i in range(4)]
  losses = []
  for i in range(steps):
    x = jnp.asarray(data[i % len(data)])
    patches = patching.patchify(x, (16, 16))
    encoder = {"encoder": mesh_lib.to_host(state.params["encoder"])}
    mask = sampler(strategy)(step_lib.step_keys(KEY, i)[0], patches, jnp.float32(0), encoder)
    batch = mesh_lib.put_batch({"logmel": np.asarray(x), "mask": np.asarray(mask)}, mesh)
    state, m, _ = fn(state, batch, key)
    losses.append(float(m["loss"]))
  return losses, mesh_lib.to_host(state)


def falls(losses) -> bool:
  """The last 5 steps average at least 15% below the untrained model's loss (step 0)."""
  return np.mean(losses[-5:]) < 0.85 * losses[0]


@pytest.mark.parametrize("objective", ["m2d", "mae"])
@pytest.mark.parametrize("strategy", masking.names())
def test_loss_falls_for_every_strategy(objective, strategy):
  losses, state = train_losses(objective, strategy)
  assert np.isfinite(losses).all()
  assert falls(losses), (objective, strategy, losses[:3], losses[-5:])
  assert (state.target_params is None) == (objective == "mae")  # MAE keeps no target
