"""M2D's target EMA inside the train step: the authors' linear ramp at the step counter, one
update per optimizer step (so none on the accumulating calls of ``optim.accum_steps``)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.config import base_config
from dwm_jax.train import ema, setup as setup_lib, state as state_lib
from dwm_jax.train import step as step_lib

TOTAL = 6


def config(accum: int):
  c = base_config()  # the authors' defaults: linear ramp, independent target init
  c.model.name, c.model.input_shape = "tiny", (32, 64)
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 1, 2, 64
  c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
  c.objective.ema_decay_start, c.objective.ema_decay_end = 0.5, 0.9  # large, visible moves
  c.mask.name = "random"
  c.batch_size, c.total_steps, c.steps_per_epoch = 4, TOTAL, TOTAL
  c.optim.base_lr, c.optim.warmup_epochs, c.optim.accum_steps = 0.5, 0.0, accum
  return c


def run(accum: int):
  """Targets and online params after each of ``TOTAL`` calls, and the initial target."""
  setup = setup_lib.build(config(accum), dataset_size=4 * TOTAL)
  step = jax.jit(functools.partial(step_lib.train_step, setup=setup))
  state = jax.jit(lambda k: state_lib.create_train_state(setup, k))(jax.random.key(0))
  first = jax.device_get(state.target_params)
  out = []
  for i in range(TOTAL):
    x = jax.random.normal(jax.random.key(10 + i), (4, 32, 64))
    state, metrics, _ = step(state, {"logmel": x}, jax.random.key(1))
    out.append(jax.device_get((state.target_params,
                               setup.objective.target_params_of(state.params),
                               metrics["ema_decay"])))
  return setup, first, out


def close(a, b):
  return all(np.allclose(x, y, rtol=1e-5, atol=1e-6)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_ema_update_per_optimizer_step_at_the_linear_ramp():
  accum = 2  # calls 1, 3, 5 update the optimizer (and the target); 0, 2, 4 accumulate
  setup, target, out = run(accum)
  for i, (new_target, online, decay) in enumerate(out):
    want_decay = 0.5 + (0.9 - 0.5) * i / (TOTAL - 1)  # the authors' step / (T - 1)
    assert float(decay) == pytest.approx(want_decay, abs=1e-6)
    updated = (i + 1) % accum == 0
    if updated:
      want = ema.ema_update(target, online, jnp.float32(want_decay))
      assert close(new_target, want), i
      assert not close(new_target, target), i
    else:  # an accumulating call: the optimizer did not move, nor does the target
      assert close(new_target, target), i
    target = new_target
  assert setup.accum_steps == accum
