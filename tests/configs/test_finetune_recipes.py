"""configs/finetune.py: the recipes carry the values their docstring cites, and all are valid."""
import pytest

from configs import finetune as recipes
from dwm_jax.evaluate.finetuning.config import validate


@pytest.mark.parametrize("arg", [None, "recipe=cpu", "recipe=m2d", "recipe=m2d,task=as20k",
                                 "recipe=m2d,task=esc50", "recipe=m2d,task=spcv2",
                                 "recipe=m2d,task=vc1"])
def test_every_recipe_is_valid(arg):
  validate(recipes.get_config(arg), device_count=8, input_shape=(80, 608), patch_size=(16, 16))


def test_m2d_recipe_is_evars():
  c = recipes.get_config("recipe=m2d")
  assert (c.batch_size, c.epochs, c.optim.warmup_epochs, c.optim.name) == (128, 200, 5, "sgd")
  assert c.optim.base_lr * c.batch_size / 256 == 2.0  # EVAR's ft_lr, absolute
  assert (c.augment.mixup, c.augment.freq_mask, c.augment.time_mask) == (0.5, 30, 192)
  assert (c.optim.layer_decay, c.optim.head_lr_scale, c.early_stop.patience) == (1.0, 1.0, 0)
  esc = recipes.get_config("recipe=m2d,task=esc50")
  assert esc.optim.base_lr * esc.batch_size / 256 == 0.5 and esc.augment.patch_dropout == 0.5
  assert esc.augment.mixup == 0.0 and esc.augment.time_mask == 0
  vc1 = recipes.get_config("recipe=m2d,task=vc1")
  assert vc1.optim.name == "adamw" and vc1.optim.base_lr * vc1.batch_size / 256 == 0.001


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown recipe"):
    recipes.get_config("recipe=fast")
  with pytest.raises(ValueError, match="unknown M2D fine-tuning task"):
    recipes.get_config("recipe=m2d,task=audioset")
  with pytest.raises(ValueError, match="KEY in recipe, task"):
    recipes.get_config("optimizer=sgd")
