"""AdamW schedule, lr scaling, weight-decay mask, accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dwm_jax.config import base_config
from dwm_jax.train import ema, optimizer


def make_tx(c, total_steps=10, steps_per_epoch=10):
  return optimizer.make_optimizer(c, optimizer.make_schedule(c, total_steps=total_steps,
                                                             steps_per_epoch=steps_per_epoch))


def config(**optim):
  c = base_config()
  c.batch_size = 512
  for k, v in optim.items():
    setattr(c.optim, k, v)
  return c


def test_lr_scales_with_effective_batch_and_follows_warmup_cosine():
  c = config(base_lr=1e-3, warmup_epochs=2.0, min_lr=1e-5)
  assert optimizer.peak_lr(c) == pytest.approx(2e-3)
  sched = optimizer.make_schedule(c, total_steps=100, steps_per_epoch=10)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(1e-3, rel=1e-5)  # halfway through warmup
  assert float(sched(20)) == pytest.approx(2e-3, rel=1e-5)  # peak
  assert float(sched(60)) == pytest.approx(1e-5 + (2e-3 - 1e-5) * 0.5, rel=1e-4)
  assert float(sched(100)) == pytest.approx(1e-5, rel=1e-4)
  c4 = config(base_lr=1e-3, warmup_epochs=2.0, accum_steps=4)
  assert optimizer.peak_lr(c4) == pytest.approx(8e-3)
  # The schedule counts optimizer updates: 100 calls with accum 4 are 25 updates, warmup 5.
  s4 = optimizer.make_schedule(c4, total_steps=100, steps_per_epoch=10)
  assert float(s4(5)) == pytest.approx(8e-3, rel=1e-5)


def test_bad_schedule_arguments_raise():
  with pytest.raises(ValueError, match="accum_steps"):
    optimizer.make_schedule(config(accum_steps=0), total_steps=10, steps_per_epoch=1)
  with pytest.raises(ValueError, match="total_steps"):
    optimizer.make_schedule(config(), total_steps=0, steps_per_epoch=1)


def test_weight_decay_skips_biases_norms_and_tokens():
  params = {"encoder": {"patch_embed": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
                        "cls_token": jnp.ones((1, 1, 3)), "norm": {"scale": jnp.ones(3)}},
            "predictor": {"mask_token": jnp.ones((1, 1, 3)), "out": {"kernel": jnp.ones((3, 2))}}}
  mask = optimizer.decay_mask(params)
  assert mask["encoder"]["patch_embed"] == {"kernel": True, "bias": False}
  assert mask["encoder"]["cls_token"] is False and mask["encoder"]["norm"]["scale"] is False
  assert mask["predictor"]["mask_token"] is False and mask["predictor"]["out"]["kernel"] is True
  # With zero gradients only decayed leaves move (AdamW's decoupled decay).
  tx = make_tx(config(base_lr=0.1, warmup_epochs=0.0, weight_decay=0.5))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert moved == mask


def test_clipping_bounds_the_update_direction():
  p = {"w": jnp.ones((2, 2))}
  tx = make_tx(config(clip_norm=1.0, weight_decay=0.0, warmup_epochs=0.0))
  g = {"w": jnp.full((2, 2), 100.0)}
  tx_noclip = make_tx(config(weight_decay=0.0, warmup_epochs=0.0))
  # Adam normalises the first step, so compare the clipped gradient inside the chain state.
  state = tx.init(p)
  _, new_state = tx.update(g, state, p)
  mu = new_state[1][0].mu["w"]  # (clip, adamw) -> adamw's adam state
  np.testing.assert_allclose(optax.global_norm(mu) / (1 - 0.9), 1.0, rtol=1e-5)
  _, s2 = tx_noclip.update(g, tx_noclip.init(p), p)
  np.testing.assert_allclose(optax.global_norm(s2[0][0].mu["w"]) / (1 - 0.9), 200.0, rtol=1e-5)


def test_accumulation_updates_every_k_calls():
  c = config(accum_steps=3, weight_decay=0.0, warmup_epochs=0.0)
  tx = make_tx(c, total_steps=30, steps_per_epoch=3)
  p = {"w": jnp.ones(3)}
  state = tx.init(p)
  flags = []
  for _ in range(6):
    upd, state = tx.update({"w": jnp.ones(3)}, state, p)
    flags.append((bool(optimizer.is_update_step(state)), bool(jnp.any(upd["w"] != 0))))
  assert flags == [(False, False), (False, False), (True, True)] * 2


def test_ema_decay_schedule():
  for schedule in ema.SCHEDULES:
    assert float(ema.ema_decay(0, 100, 0.99995, 0.99999, schedule)) == pytest.approx(0.99995)
    assert float(ema.ema_decay(100, 100, 0.99995, 0.99999, schedule)) == pytest.approx(0.99999)
    assert float(ema.ema_decay(500, 100, 0.99995, 0.99999, schedule)) == pytest.approx(0.99999)
  assert float(ema.ema_decay(50, 100, 0.9, 1.0, "cosine")) == pytest.approx(0.95, abs=1e-6)
  assert float(ema.ema_decay(25, 100, 0.9, 1.0, "linear")) == pytest.approx(0.925, abs=1e-6)
  assert float(ema.ema_decay(25, 100, 0.9, 1.0, "cosine")) < 0.925  # slow start
  with pytest.raises(ValueError, match="unknown EMA schedule"):
    ema.ema_decay(0, 10, 0.9, 0.99, "step")
  new = ema.ema_update({"a": jnp.zeros(2)}, {"a": jnp.ones(2)}, jnp.float32(0.75))
  np.testing.assert_allclose(new["a"], 0.25)
