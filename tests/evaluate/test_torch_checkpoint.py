"""import-torch / export-torch against a timm ViT in the M2D layout and the authors' runtime."""
import argparse
import logging
import os
import re

import jax
import numpy as np
import pytest

from dwm_jax import cli
from dwm_jax.evaluate import hear
from dwm_jax.evaluate.embed import embed_logmels
from dwm_jax.evaluate.encoder import load_encoder, random_encoder, save_encoder
from dwm_jax.evaluate.torch_checkpoint import (encoder_to_state, parse_folder_name,
                                               state_to_encoder)
from dwm_jax.models import sincos_2d
from tests.evaluate.conftest import tiny_model_cfg
from tests.m2d_reference import (authors_frames, mae_table, rel_err, runtime_encoder,
                                 state_dict_numpy, timm_m2d_vit)

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

M2D_FOLDER = "m2d_vit_base-80x608p16x16-220930-mr7"
SMALL_FOLDER = "m2d_vit_base-80x64p16x16-240101-mr7"  # 64-frame windows: fast tests



def logmels(n: int, t: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(-6.0, 3.5, (n, 80, t)).astype(np.float32)


def m2d_checkpoint(vit, path, *, prefix="backbone.", norm_stats=(-5.5, 3.3), extra=True,
                   wrap=True) -> str:
  """torch.save as the authors do: {'model': state dict, 'epoch', 'args'}, with the pretraining
  target / predictor keys beside the encoder's."""
  sd = dict(vit.state_dict())
  d = sd["cls_token"].shape[-1]
  if extra:
    for k in [k for k in sd if k.startswith(("blocks.", "norm."))]:
      sd["target_" + k] = torch.randn_like(sd[k])  # target_blocks.*, target_norm.*
    sd["mask_token"] = torch.randn(1, 1, 32)
    sd["decoder_embed.weight"] = torch.randn(32, d)
    sd["decoder_pos_embed"] = torch.randn_like(sd["pos_embed"][..., :32])
    sd["decoder_blocks.0.norm1.weight"] = torch.randn(32)
    sd["decoder_pred.weight"] = torch.randn(d, 32)
  if norm_stats is not None:
    sd["norm_stats"] = torch.tensor(norm_stats)
  sd = {prefix + k: v for k, v in sd.items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save({"model": sd, "epoch": 300, "args": argparse.Namespace(blr=3e-4)} if wrap else sd,
             path)
  return str(path)


def import_torch(*args) -> int:
  return cli.main(["import-torch", *map(str, args)])


def ours_frames(enc, x: np.ndarray) -> np.ndarray:
  return np.stack([f for f, _ in embed_logmels(enc, list(x))])


# ------------------------------------------------------------------ Must show: the authors' runtime
@pytest.mark.parametrize("width,heads", [(128, 2), (768, 12)], ids=["w128", "vitb-width"])
def test_authors_checkpoint_gives_the_authors_frame_embeddings(tmp_path, caplog, width, heads):
  """Random timm ViT (M2D layout, MAE table) saved as an M2D checkpoint with target / decoder
  keys and norm_stats (-5.5, 3.3) -> import-torch (sizes from the folder name, heads = width /
  64) -> frame embeddings of a 1.5-window clip equal the authors' runtime to 1e-4 relative."""
  vit = timm_m2d_vit(width, depth=2, heads=heads, seed=width)
  ckpt = m2d_checkpoint(vit, tmp_path / M2D_FOLDER / "checkpoint-300.pth")
  out = tmp_path / "enc.msgpack"
  with caplog.at_level(logging.INFO):
    assert import_torch(ckpt, "--out", out) == 0
  log = caplog.text
  assert "target_blocks.*" in log and "decoder_blocks.*" in log and "mask_token" in log
  assert "sin-cos table" in log and "checkpoint norm_stats" in log

  enc = load_encoder(str(out))
  assert enc.pos_embed is None  # the MAE table == ours: the export needs no stored table
  assert (enc.width, enc.module.depth, enc.module.heads) == (width, 2, heads)
  assert np.isclose(enc.norm_mean, -5.5) and np.isclose(enc.norm_std, 3.3)
  x = logmels(2, 608 + 300, seed=1)  # 1.5 windows, the last not a whole number of patches
  ref = authors_frames(vit, x, -5.5, 3.3, 608)
  ours = ours_frames(enc, x)
  assert ours.shape == ref.shape == (2, 38 + 19, 5 * width)
  err = rel_err(ours, ref)
  assert err < 1e-4, err
  np.testing.assert_allclose(ours.mean(1), ref.mean(1), rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # The test can tell the channel order: the halves swapped (the old table) miss by far.
  t = enc.position_table
  swapped = np.concatenate(np.split(t, 2, axis=1)[::-1], axis=1)
  wrong = type(enc)(enc.model_cfg, enc.params, enc.norm_mean, enc.norm_std, swapped)
  assert rel_err(ours_frames(wrong, x), ref) > 1e-2


def test_runtime_reference_equals_timm_on_a_full_window():
  """The reference's cut-table path is the runtime's; on a full window it must be timm's own."""
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64))
  x = torch.from_numpy(logmels(2, 64))[:, None]
  with torch.no_grad():
    np.testing.assert_allclose(runtime_encoder(vit, x).numpy(), vit.forward_features(x).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 15, 16, 17, 63, 64, 65, 128, 150, 200])
def test_any_length_matches_encode_lms(tmp_path, t):
  """Windows, zero padding to a whole patch, the cut table: every remainder of 16 and of 64."""
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64), seed=3)
  ckpt = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "c.pth", prefix="", extra=False)
  assert import_torch(ckpt, "--out", tmp_path / "e.msgpack") == 0
  enc = load_encoder(str(tmp_path / "e.msgpack"))
  x = logmels(1, t, seed=t)
  ref = authors_frames(vit, x, -5.5, 3.3, 64, use_timm_for_full_windows=False)
  assert rel_err(ours_frames(enc, x), ref) < 1e-4


# ------------------------------------------------------------------ layouts, tables, options
@pytest.mark.parametrize("prefix,wrap", [("", True), ("module.ar.runtime.backbone.", False),
                                         ("backbone.", False)])
def test_prefixes_and_plain_state_dicts(tmp_path, prefix, wrap):
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64), seed=4)
  ckpt = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "c.pth", prefix=prefix, wrap=wrap,
                        norm_stats=None)
  if prefix.startswith("module."):  # EVAR: a task head and the front end beside the backbone
    sd = torch.load(ckpt)
    sd["module.head.mlp.mlp.0.weight"] = torch.zeros(10, 320)
    sd["module.ar.runtime.to_spec.mel_basis"] = torch.zeros(80, 201)
    torch.save(sd, ckpt)
  assert import_torch(ckpt, "--out", tmp_path / "e.msgpack") == 0
  enc = load_encoder(str(tmp_path / "e.msgpack"))
  assert (enc.norm_mean, enc.norm_std) == pytest.approx((-7.1, 4.2))  # the default
  x = logmels(1, 100)
  assert rel_err(ours_frames(enc, x), authors_frames(vit, x, -7.1, 4.2, 64)) < 1e-4


def test_own_table_is_stored_and_used(tmp_path):
  """A learned-style table (random, non-zero CLS row) is kept in the export and used, cut to
  the columns of a short window as the runtime does; the CLS row folds into the CLS token."""
  rng = np.random.default_rng(5)
  table = rng.normal(0, 0.5, (1 + 20, 64)).astype(np.float32)
  vit = timm_m2d_vit(64, depth=2, heads=1, img=(80, 64), seed=5, pos_embed=table)
  ckpt = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "c.pth")
  out = tmp_path / "e.msgpack"
  assert import_torch(ckpt, "--out", out) == 0
  enc = load_encoder(str(out))
  np.testing.assert_array_equal(enc.pos_embed, table[1:])
  x = logmels(2, 150)
  assert rel_err(ours_frames(enc, x), authors_frames(vit, x, -5.5, 3.3, 64)) < 1e-4
  same_params = type(enc)(enc.model_cfg, enc.params, enc.norm_mean, enc.norm_std)
  assert same_params.fingerprint != enc.fingerprint  # embedding caches tell them apart
  # The HEAR API loads it (its own front end; shapes only here).
  model = hear.load_model(str(out))
  scene = hear.get_scene_embeddings(np.zeros((1, 16000), np.float32), model)
  assert scene.shape == (1, 5 * 64) and np.isfinite(scene).all()


def test_heads_flag(tmp_path):
  """Heads are not in the weights: default width / 64, --heads overrides."""
  vit = timm_m2d_vit(128, depth=1, heads=4, img=(80, 64), seed=6)
  ckpt = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "c.pth")
  x = logmels(1, 64)
  ref = authors_frames(vit, x, -5.5, 3.3, 64)
  assert import_torch(ckpt, "--out", tmp_path / "two.msgpack") == 0
  assert rel_err(ours_frames(load_encoder(str(tmp_path / "two.msgpack")), x), ref) > 1e-3
  assert import_torch(ckpt, "--out", tmp_path / "four.msgpack", "--heads", "4") == 0
  assert rel_err(ours_frames(load_encoder(str(tmp_path / "four.msgpack")), x), ref) < 1e-4


def test_flags_replace_the_folder_name_and_norm_stats(tmp_path, caplog):
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64), seed=7)
  ckpt = m2d_checkpoint(vit, tmp_path / "weights" / "c.pth")
  out = tmp_path / "e.msgpack"
  with caplog.at_level(logging.INFO):
    assert import_torch(ckpt, "--out", out, "--input-shape", "80x64", "--patch-size", "16x16",
                        "--norm-mean", "-4", "--norm-std", "2") == 0
  assert "(flags)" in caplog.text
  enc = load_encoder(str(out))
  assert (enc.norm_mean, enc.norm_std) == (-4.0, 2.0)
  x = logmels(1, 80)
  assert rel_err(ours_frames(enc, x), authors_frames(vit, x, -4.0, 2.0, 64)) < 1e-4


# ------------------------------------------------------------------ export-torch and round trips
def test_export_torch_loads_into_timm_and_gives_our_embeddings(tmp_path):
  """A dwm-jax encoder (random, non-trivial) -> export-torch -> timm (strict load) -> the
  authors' runtime gives dwm-jax's embeddings."""
  enc = random_encoder(tiny_model_cfg(), seed=8, norm_mean=-5.0, norm_std=3.0)
  src = save_encoder(str(tmp_path / "enc.msgpack"), model_cfg=enc.model_cfg, params=enc.params,
                     norm_mean=-5.0, norm_std=3.0)
  pth = tmp_path / SMALL_FOLDER / "weights.pth"
  assert cli.main(["export-torch", "--encoder", src, "--out", str(pth)]) == 0
  sd = torch.load(pth)
  np.testing.assert_allclose(sd.pop("norm_stats").numpy(), [-5.0, 3.0])
  vit = timm_m2d_vit(32, depth=1, heads=2, img=(80, 64), mlp_ratio=2)  # tiny: mlp 64
  vit.load_state_dict(sd, strict=True)
  x = logmels(2, 150, seed=8)
  assert rel_err(authors_frames(vit, x, -5.0, 3.0, 64), ours_frames(enc, x)) < 1e-4


@pytest.mark.parametrize("own_table", [False, True])
def test_round_trip_export_import(tmp_path, own_table):
  rng = np.random.default_rng(9)
  table = rng.normal(size=(20, 32)).astype(np.float32) if own_table else None
  base = random_encoder(tiny_model_cfg(), seed=9, norm_mean=-6.0, norm_std=2.5)
  src = save_encoder(str(tmp_path / "a.msgpack"), model_cfg=base.model_cfg, params=base.params,
                     norm_mean=-6.0, norm_std=2.5, pos_embed=table)
  pth = tmp_path / SMALL_FOLDER / "w.pth"
  assert cli.main(["export-torch", "--encoder", src, "--out", str(pth)]) == 0
  assert import_torch(pth, "--out", tmp_path / "b.msgpack", "--heads", "2") == 0
  a, b = load_encoder(src), load_encoder(str(tmp_path / "b.msgpack"))
  assert (b.norm_mean, b.norm_std) == (-6.0, 2.5)
  assert (b.pos_embed is None) == (not own_table)
  np.testing.assert_array_equal(b.position_table, a.position_table)
  for (pa, la), (pb, lb) in zip(jax.tree_util.tree_leaves_with_path(a.params),
                                jax.tree_util.tree_leaves_with_path(b.params)):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  arch = lambda e: (e.module.width, e.module.depth, e.module.heads, e.module.mlp_dim,
                    e.input_shape, e.patch_size)
  assert arch(a) == arch(b)
  x = logmels(1, 100, seed=9)
  np.testing.assert_array_equal(ours_frames(a, x), ours_frames(b, x))


def test_import_maps_in_memory_without_files():
  """The mapping itself on numpy arrays: the state of a timm ViT -> our parameter tree."""
  vit = timm_m2d_vit(64, depth=2, heads=1, img=(80, 64), seed=10)
  imp = state_to_encoder(state_dict_numpy(vit), input_shape=(80, 64))
  assert imp.pos_embed is None and imp.ignored == []
  k = imp.params["patch_embed"]["kernel"]  # [P, D]: value (i, j) of a patch at row i * 16 + j
  w = vit.patch_embed.proj.weight.detach().numpy()
  assert k.shape == (256, 64)
  np.testing.assert_array_equal(k[3 * 16 + 5], w[:, 0, 3, 5])


def test_legacy_export_files_keep_their_table(tmp_path, tiny_encoder):
  """dwm-jax-encoder/1 files were trained with the frequency half first: they still load so."""
  import flax.serialization
  path = save_encoder(str(tmp_path / "new.msgpack"), model_cfg=tiny_encoder.model_cfg,
                      params=tiny_encoder.params, norm_mean=-7.1, norm_std=4.2)
  with open(path, "rb") as f:
    payload = flax.serialization.msgpack_restore(f.read())
  payload["format"] = "dwm-jax-encoder/1"
  with open(tmp_path / "old.msgpack", "wb") as f:
    f.write(flax.serialization.msgpack_serialize(payload))
  old = load_encoder(str(tmp_path / "old.msgpack"))
  t = sincos_2d(32, (5, 4))
  np.testing.assert_array_equal(old.position_table, np.concatenate([t[:, 16:], t[:, :16]], 1))
  assert load_encoder(path).pos_embed is None


# ------------------------------------------------------------------ refusals: exit 2, one message
def _refused(capsys, *args) -> str:
  assert import_torch(*args) == 2
  *progress, err = capsys.readouterr().err.strip().splitlines()
  # Before the refusal only the command's own progress lines (what it read), no traceback.
  assert all(re.match(r"\d\d:\d\d:\d\d I dwm_jax\.evaluate\.torch_cli\] ", line)
             for line in progress), progress
  assert err.startswith("dwm-jax import-torch: error: "), err
  return err


def test_refuses_missing_unexpected_and_misshapen(tmp_path, capsys):
  vit = timm_m2d_vit(64, depth=2, heads=1, img=(80, 64), seed=11)
  out = tmp_path / "e.msgpack"
  sd = dict(vit.state_dict())
  del sd["blocks.1.mlp.fc2.bias"]
  sd["blocks.0.ls1.gamma"] = torch.ones(64)  # LayerScale: not in this encoder
  sd["patch_embed.norm.weight"] = torch.ones(64)
  p = tmp_path / SMALL_FOLDER / "bad.pth"
  p.parent.mkdir(parents=True)
  torch.save(sd, p)
  err = _refused(capsys, p, "--out", out)
  assert "missing keys: blocks.1.mlp.fc2.bias" in err
  assert "unexpected keys: blocks.0.ls1.gamma, patch_embed.norm.weight" in err
  assert not out.exists()
  good = m2d_checkpoint(vit, tmp_path / "plain" / "c.pth")
  err = _refused(capsys, good, "--out", out, "--input-shape", "80x128")
  assert "pos_embed [1, 21, 64] (expected [1, 41, 64])" in err and "--input-shape" in err
  err = _refused(capsys, good, "--out", out)  # no folder-name sizes, no flag
  assert "--input-shape" in err and "80x608p16x16" in err
  err = _refused(capsys, good, "--out", out, "--input-shape", "80x64", "--patch-size", "8x8")
  assert "patch size 8x8 given" in err and "[64, 1, 16, 16]" in err
  err = _refused(capsys, good, "--out", out, "--input-shape", "80x64", "--heads", "3")
  assert "not divisible by 3 heads" in err


def test_refuses_other_layouts(tmp_path, capsys):
  out = tmp_path / "e.msgpack"
  # Three input channels: an image ViT.
  from timm.models.vision_transformer import VisionTransformer
  rgb = VisionTransformer(img_size=(80, 64), patch_size=16, in_chans=3, embed_dim=64, depth=1,
                          num_heads=1, num_classes=0)
  p = tmp_path / SMALL_FOLDER / "rgb.pth"
  p.parent.mkdir(parents=True)
  torch.save(rgb.state_dict(), p)
  assert "takes 3 input channels" in _refused(capsys, p, "--out", out)
  # AudioMAE-like: time as image rows, so the MAE table is the one of the (time, freq) grid.
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64), pos_embed=mae_table(64, (4, 5)))
  p = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "audiomae.pth")
  err = _refused(capsys, p, "--out", out)
  assert "sin-cos table of a 4x5 patch grid" in err and "AudioMAE" in err
  # A 32 kHz model: the front end would not be the authors'.
  vit = timm_m2d_vit(64, depth=1, heads=1, img=(80, 64))
  p = m2d_checkpoint(vit, tmp_path / "m2d_vit_base-80x64p16x16p32k-240101" / "c.pth")
  assert "32k model" in _refused(capsys, p, "--out", out)


def test_refuses_unreadable_files(tmp_path, capsys):
  out = tmp_path / "e.msgpack"
  assert "no checkpoint file" in _refused(capsys, tmp_path / "missing.pth", "--out", out)
  junk = tmp_path / SMALL_FOLDER / "junk.pth"
  junk.parent.mkdir(parents=True)
  junk.write_bytes(b"not a checkpoint")
  assert "not a readable PyTorch checkpoint" in _refused(capsys, junk, "--out", out)
  odd = tmp_path / SMALL_FOLDER / "odd.pth"
  torch.save({"model": {"x": torch.zeros(1)}, "obj": logging.getLogger("x")}, odd)
  assert "--trust-pickle" in _refused(capsys, odd, "--out", out)
  torch.save({"model": {"cls_token": torch.zeros(1, 1, 64)}}, odd)
  assert "no 'patch_embed.proj.weight' key" in _refused(capsys, odd, "--out", out)


# ------------------------------------------------------------------ folder names
@pytest.mark.parametrize("name,want", [
    ("m2d_vit_base-80x608p16x16-220930-mr7", ((80, 608), (16, 16), "16k")),
    ("m2d_vit_base-80x1001p16x16p16k-240213-mr7", ((80, 1001), (16, 16), "16k")),
    ("m2d_clap_vit_base-80x1001p16x16p16kpA", ((80, 1001), (16, 16), "16k")),
    ("m2d_as_vit_base-80x608p16x16p32k-240101", ((80, 608), (16, 16), "32k")),
    ("msm_mae_vit_base-80x208p16x16-220924-mr75", ((80, 208), (16, 16), "16k")),
    ("/a/b/m2d_vit_base-80x608p16x8-x/", ((80, 608), (16, 8), "16k")),
    ("checkpoints", None), ("m2d_vit_base-80x608", None), ("80x608p16x16", None),
])
def test_folder_names(name, want):
  got = parse_folder_name(name)
  assert (got if got is None else (got.input_shape, got.patch_size, got.sample_rate)) == want


def test_encoder_to_state_keys_are_timms():
  enc = random_encoder(tiny_model_cfg(), seed=0)
  vit = timm_m2d_vit(32, depth=1, heads=2, img=(80, 64), mlp_ratio=2)
  state = encoder_to_state(enc)
  assert set(state) - {"norm_stats"} == set(vit.state_dict())
  for k, v in vit.state_dict().items():
    assert state[k].shape == tuple(v.shape), k
