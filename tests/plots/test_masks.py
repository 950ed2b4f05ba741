"""The mask gallery: inputs (synthetic clip, user WAV), per-strategy panels and the PNG it writes."""
import jax
import matplotlib.image
import numpy as np
import pytest
import soundfile as sf

from dwm_jax import masking, patching
from dwm_jax.plots import masks as show


def mask_panel_titles(fig) -> list[str]:
  return [ax.get_title(loc="left") for ax in fig.axes if "patches masked" in
          ax.get_title(loc="left")]


def test_to_grid_image_follows_the_patch_order():
  # Put each patch's index in all of its pixels: the grid image must match the spectrogram layout.
  grid = patching.Grid(3, 5)
  values = np.arange(grid.num_patches, dtype=np.float32)
  pixels = patching.unpatchify(np.repeat(values[None, :, None], 4, axis=2), grid, (2, 2))[0]
  np.testing.assert_array_equal(show.to_grid_image(values, grid), np.asarray(pixels)[::2, ::2])


def test_dispersion_map_peaks_at_the_content():
  rng = np.random.default_rng(0)
  logmel = rng.normal(0, 0.01, (80, 608)).astype(np.float32)
  logmel[32:48:2, 160:192] += 3.0  # a striped (harmonic-like) region in patch row 2, cols 10-11
  d = show.dispersion_map(logmel)
  assert d.shape == (5, 38)
  assert set(zip(*np.nonzero(d > 10 * np.median(d)))) == {(2, 10), (2, 11)}


def test_sample_masks_exact_count_deterministic_and_stand_in_for_informed():
  logmel = np.random.default_rng(1).normal(size=(80, 608)).astype(np.float32)
  key = jax.random.key(3)
  masks = show.sample_masks(logmel, key=key, ratio=0.7)
  assert sorted(masks) == masking.names()
  k = patching.num_masked(190, 0.7)
  for name, m in masks.items():
    assert m.shape == (5, 38) and m.dtype == bool and m.sum() == k, name
  again = show.sample_masks(logmel, ["dwm", "random"], key=key, ratio=0.7)
  np.testing.assert_array_equal(again["dwm"], masks["dwm"])  # independent of the other names
  other = show.sample_masks(logmel, ["dwm"], key=jax.random.key(4), ratio=0.7)
  assert (other["dwm"] != masks["dwm"]).any()


def test_unknown_strategy_is_named():
  with pytest.raises(ValueError, match="unknown masking strategy 'nope'.*valid: .*dwm"):
    show.main(["--strategies", "dwm,nope", "--out", "/dev/null"])


def test_show_synthetic_writes_png_with_one_panel_per_strategy(tmp_path):
  out = tmp_path / "gallery.png"
  assert show.main(["--out", str(out), "--index", "6", "--seed", "1"]) == 0
  img = matplotlib.image.imread(out)
  assert out.stat().st_size > 20_000 and img.ndim == 3 and img.std() > 0.05

  logmel = show.load_log_mel(index=6, seed=1)
  assert logmel.shape == (80, 608) and np.isfinite(logmel).all()
  fig = show.plot_masks(logmel, key=jax.random.key(1), variance=True)
  titles = mask_panel_titles(fig)
  assert [t.split(":")[0] for t in titles] == masking.names()
  assert all("133 of 190 patches masked" in t for t in titles)
  assert "stand-in" in next(t for t in titles if t.startswith("informed"))
  image_panels = [ax for ax in fig.axes if ax.get_images() and ax.get_title(loc="left")]
  assert len(image_panels) == 1 + 2 + len(masking.names())  # spectrogram, mad, variance, masks


def test_show_user_wav_stereo_44k_short_clip_is_padded(tmp_path, capsys):
  sr = 44100
  t = np.arange(int(2.5 * sr)) / sr
  tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > 1.0)
  wav = tmp_path / "user.wav"
  sf.write(wav, np.stack([tone, 0.5 * tone], axis=1), sr)

  logmel = show.load_log_mel(str(wav))
  assert logmel.shape == (80, 608)
  assert "padded with silence" in capsys.readouterr().err
  # The tone (1.0-2.5 s, 440 Hz) is louder than the silent start and the padded tail.
  loudest = logmel.max(axis=0)  # [T]
  assert loudest[120:240].min() > loudest[:90].max() + 1.0
  assert loudest[120:240].min() > loudest[260:].max() + 1.0

  out = tmp_path / "user.png"
  assert show.main(["--wav", str(wav), "--strategies", "dwm,random", "--ratio", "0.5",
                    "--out", str(out)]) == 0
  assert out.stat().st_size > 10_000
  assert "wrote" in capsys.readouterr().out


def test_start_past_the_end_is_an_error(tmp_path):
  wav = tmp_path / "short.wav"
  sf.write(wav, np.zeros(16000, np.float32), 16000)
  with pytest.raises(ValueError, match="past the end"):
    show.load_log_mel(str(wav), start=5.0)


def test_console_script_dispatches_to_show(tmp_path):
  from dwm_jax import cli
  out = tmp_path / "cli.png"
  assert cli.main(["show", "--strategies", "random", "--index", "1", "--out", str(out)]) == 0
  assert out.stat().st_size > 10_000
