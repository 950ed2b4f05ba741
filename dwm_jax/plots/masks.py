"""Mask gallery: a spectrogram, its per-patch dispersion and the mask of every strategy, as a PNG.

  python -m dwm_jax.plots.masks --out mask_gallery.png             # built-in synthetic clip
  dwm-jax show --wav my.wav --start 2.0 --ratio 0.7 --hint 0.0     # a user's audio file

Notebooks call :func:`load_log_mel` and :func:`plot_masks` (a ``matplotlib.figure.Figure``, made
without pyplot so it works under any backend); the train loop draws the mask a step trained on
with :func:`mask_figure`. ``informed`` needs encoder features; without
``features`` this tool gives it a stand-in (a fixed random projection of the patch values, see
:func:`stand_in_features`) and says so in its panel title.
"""
from __future__ import annotations

import argparse
import sys
import zlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from dwm_jax import patching
from dwm_jax.config import base_config
from dwm_jax.masking import dispersion, get, names, sample

PATCH_SIZE = (16, 16)
FRAMES = 608
STAND_IN_DIM = 64
MASK_RGBA = (0.55, 0.55, 0.55, 0.88)  # masked patches: grey veil over the spectrogram


def normalize(logmel: np.ndarray) -> np.ndarray:
  """Standardise with the config's dataset statistics (M2D's AudioSet mean/std), as training does."""
  data = base_config().data
  return ((logmel - data.norm_mean) / data.norm_std).astype(np.float32)


def load_log_mel(wav: str | None = None, *, index: int = 0, seed: int = 0, start: float = 0.0,
                 frames: int = FRAMES) -> np.ndarray:
  """Normalised log-mel ``[80, frames]`` of a user's audio file or of synthetic clip ``index``.

  Audio is read at 16 kHz mono from ``start`` seconds; a clip shorter than ``frames`` is padded
  with silence (and says so on stderr).
  """
  from dwm_jax.data.log_mel import LogMelSpec, log_mel  # pylint: disable=import-outside-toplevel

  spec = LogMelSpec()
  if frames < 1 or start < 0:
    raise ValueError(f"need frames >= 1 and start >= 0, got frames={frames}, start={start}")
  need = (frames - 1) * spec.hop_length  # centred framing: 1 + S // hop frames
  if wav is None:
    from dwm_jax.data.synthetic import synthesize_clip  # pylint: disable=import-outside-toplevel
    # The same clip as the synthetic data set's (config data.synthetic.seconds long).
    wave, _ = synthesize_clip(index, seed=seed, seconds=base_config().data.synthetic.seconds,
                              sample_rate=spec.sample_rate)
  else:
    from dwm_jax.data.audio_io import load_audio  # pylint: disable=import-outside-toplevel
    wave = load_audio(wav, spec.sample_rate)
  first = int(round(start * spec.sample_rate))
  if first >= wave.shape[0]:
    raise ValueError(f"start {start} s is past the end of {wav or 'the clip'} "
                     f"({wave.shape[0] / spec.sample_rate:.2f} s)")
  wave = wave[first:first + need]
  if wave.shape[0] < need:
    print(f"show: audio has {wave.shape[0] / spec.sample_rate:.2f} s from {start} s; padded with "
          f"silence to {need / spec.sample_rate:.2f} s", file=sys.stderr)
    wave = np.pad(wave, (0, need - wave.shape[0]))
  return normalize(log_mel(wave, spec)[:, :frames])


def to_patches(logmel: np.ndarray, patch_size: tuple[int, int] = PATCH_SIZE
               ) -> tuple[jnp.ndarray, patching.Grid]:
  """``logmel: [F, T]`` -> ``patches: [1, N, P]`` and the grid."""
  logmel = np.asarray(logmel, np.float32)
  if logmel.ndim != 2:
    raise ValueError(f"expected a spectrogram [F, T], got shape {logmel.shape}")
  grid = patching.grid_for(logmel.shape, patch_size)
  return patching.patchify(jnp.asarray(logmel)[None], patch_size), grid


def to_grid_image(values: np.ndarray, grid) -> np.ndarray:
  """Per-patch values ``[N]`` -> ``[Fp, Tp]`` (row = frequency band, column = time step)."""
  g = patching.as_grid(grid)
  f, t = patching.patch_coords(g)
  out = np.zeros((g.freq, g.time), np.asarray(values).dtype)
  out[f, t] = np.asarray(values)
  return out


def dispersion_map(logmel: np.ndarray, metric: str = "mad",
                   patch_size: tuple[int, int] = PATCH_SIZE) -> np.ndarray:
  """Per-patch dispersion (the DWM weights, without the 1e-12) as ``[Fp, Tp]``."""
  patches, grid = to_patches(logmel, patch_size)
  return to_grid_image(np.asarray(dispersion(patches, metric)[0]), grid)


def stand_in_features(patches: jnp.ndarray, dim: int = STAND_IN_DIM, seed: int = 0
                      ) -> jnp.ndarray:
  """Model-free features for previewing ``informed``: ``[B, N, P] -> [B, N, dim]``.

  A fixed random (Gaussian) projection of each patch's values: patches with similar content get
  similar features, which is all the partition needs to be illustrated. Not an encoder.
  """
  w = jax.random.normal(jax.random.key(seed), (patches.shape[-1], dim), jnp.float32)
  return jnp.einsum("bnp,pd->bnd", patches.astype(jnp.float32), w) / np.sqrt(patches.shape[-1])


def strategy_key(key: jax.Array, name: str) -> jax.Array:
  """Each strategy's own key, independent of which other strategies are drawn."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def sample_masks(logmel: np.ndarray, strategies: Sequence[str] | None = None,
                 key: jax.Array | None = None, *, ratio: float = 0.7, hint: float = 0.0,
                 patch_size: tuple[int, int] = PATCH_SIZE,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 features: jnp.ndarray | None = None) -> dict[str, np.ndarray]:
  """One mask per strategy for ``logmel: [F, T]``: ``{name: bool [Fp, Tp]}`` (True = masked).

  ``options`` maps a strategy name to its options. ``features: [1, N, D]`` feed ``informed``;
  without them it gets :func:`stand_in_features`.
  """
  strategies = list(strategies) if strategies is not None else names()
  key = jax.random.key(0) if key is None else key
  options = dict(options or {})
  unknown = sorted(set(options) - set(strategies))
  if unknown:
    raise ValueError(f"options given for strategies not drawn: {', '.join(unknown)}")
  patches, grid = to_patches(logmel, patch_size)
  masks = {}
  for name in strategies:
    opts = dict(options.get(name, {}))
    if "features" in get(name).defaults and opts.get("features") is None:
      opts["features"] = stand_in_features(patches) if features is None else features
    mask = sample(name, strategy_key(key, name), patches, grid=grid, ratio=ratio, hint=hint,
                  **opts)
    masks[name] = to_grid_image(np.asarray(mask[0]), grid)
  return masks


def _panel_title(name: str, mask: np.ndarray, hint: float, stand_in: bool) -> str:
  title = f"{name}: {int(mask.sum())} of {mask.size} patches masked"
  if hint:
    title += f", hint {hint:g}"
  if stand_in:
    title += "  (features: random projection of the patches, a stand-in for an encoder)"
  return title


def plot_masks(logmel: np.ndarray, strategies: Sequence[str] | None = None,
               key: jax.Array | None = None, *, ratio: float = 0.7, hint: float = 0.0,
               patch_size: tuple[int, int] = PATCH_SIZE, variance: bool = False,
               options: Mapping[str, Mapping[str, Any]] | None = None,
               features: jnp.ndarray | None = None, title: str | None = None,
               panel_height: float = 1.45, width: float = 12.0) -> Figure:
  """Figure: the spectrogram, its dispersion map(s), then one masked view per strategy.

  Args:
    logmel: ``[F, T]`` (normalised) log-mel; F and T divisible by the patch size.
    strategies: names to draw (default: every registered strategy).
    key: ``jax.random`` key for the masks (default ``key(0)``); each strategy folds in its name.
    ratio, hint: as in :func:`dwm_jax.masking.sample`.
    variance: also draw the variance dispersion map (the MAD one is always drawn).
    options: ``{strategy: {option: value}}``.
    features: ``[1, N, D]`` encoder features for ``informed`` (default: a labelled stand-in).
  Returns:
    a ``matplotlib.figure.Figure`` with ``2 + variance + len(strategies)`` image panels.
  """
  strategies = list(strategies) if strategies is not None else names()
  masks = sample_masks(logmel, strategies, key, ratio=ratio, hint=hint, patch_size=patch_size,
                       options=options, features=features)
  stand_in = {name for name in strategies
              if "features" in get(name).defaults and features is None
              and (options or {}).get(name, {}).get("features") is None}
  return mask_figure(logmel, masks, hint=hint, patch_size=patch_size, variance=variance,
                     stand_in=stand_in, title=title, panel_height=panel_height, width=width)


def mask_figure(logmel: np.ndarray, masks: Mapping[str, np.ndarray], *, hint: float = 0.0,
                patch_size: tuple[int, int] = PATCH_SIZE, variance: bool = False,
                stand_in: frozenset | set = frozenset(), title: str | None = None,
                panel_height: float = 1.45, width: float = 12.0) -> Figure:
  """Figure of given masks: the spectrogram, its dispersion map(s), one masked view per mask.

  ``masks`` maps a panel name to ``bool [Fp, Tp]`` (True = masked); names in ``stand_in`` say
  their features were a stand-in.
  """
  strategies = list(masks)
  logmel = np.asarray(logmel, np.float32)
  grid = patching.grid_for(logmel.shape, patch_size)
  f_bins, t_frames = logmel.shape
  extent = (0, t_frames, 0, f_bins)
  metrics = ["mad"] + (["variance"] if variance else [])
  rows = 1 + len(metrics) + len(strategies)

  top, bottom = (0.65 if title else 0.3), 0.45  # inches kept for the title and the x label
  height = panel_height * rows + top + bottom
  fig = Figure(figsize=(width, height))
  gs = fig.add_gridspec(rows, 2, width_ratios=(1.0, 0.012), hspace=0.55, wspace=0.015,
                        top=1 - top / height, bottom=bottom / height)
  vmin, vmax = np.percentile(logmel, [1, 99.5])
  spec_kw = dict(origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=vmin, vmax=vmax,
                 interpolation="nearest")

  def panel(row: int, label: str):
    ax = fig.add_subplot(gs[row, 0])
    ax.set_title(label, fontsize=9, loc="left")
    ax.set_ylabel("mel bin", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_xticks(np.arange(0, t_frames + 1, patch_size[1] * max(1, grid.time // 8)))
    ax.set_yticks(np.arange(0, f_bins + 1, patch_size[0]))
    return ax

  ax = panel(0, f"normalised log-mel {f_bins} x {t_frames}, patch grid {grid.freq} x {grid.time}")
  im = ax.imshow(logmel, **spec_kw)
  fig.colorbar(im, cax=fig.add_subplot(gs[0, 1]))
  for i, metric in enumerate(metrics, start=1):
    d = dispersion_map(logmel, metric, patch_size)
    ax = panel(i, f"per-patch dispersion ({metric}): DWM masks high-dispersion patches more often")
    im = ax.imshow(d, origin="lower", aspect="auto", extent=extent, cmap="viridis",
                   interpolation="nearest")
    fig.colorbar(im, cax=fig.add_subplot(gs[i, 1]))

  last = ax
  veil = np.zeros((grid.freq, grid.time, 4), np.float32)
  for i, name in enumerate(strategies, start=1 + len(metrics)):
    m = np.asarray(masks[name], bool)
    ax = last = panel(i, _panel_title(name, m, hint, name in stand_in))
    ax.imshow(logmel, **spec_kw)
    veil[:] = 0.0
    veil[m] = MASK_RGBA
    ax.imshow(veil, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
    # Faint patch boundaries make the per-patch decisions readable.
    ax.set_xticks(np.arange(0, t_frames + 1, patch_size[1]), minor=True)
    ax.set_yticks(np.arange(0, f_bins + 1, patch_size[0]), minor=True)
    ax.grid(which="minor", color="white", alpha=0.12, linewidth=0.4)
    ax.tick_params(which="minor", length=0)
  last.set_xlabel("frame (10 ms)", fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / height, va="top")
  return fig


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax show", description=__doc__.split("\n\n")[0])
  p.add_argument("--wav", default=None, help="audio file (any libsndfile format); default: the "
                 "built-in synthetic clip --index")
  p.add_argument("--index", type=int, default=0, help="synthetic clip index")
  p.add_argument("--seed", type=int, default=0, help="mask key seed (and synthetic set seed)")
  p.add_argument("--start", type=float, default=0.0, help="seconds into the audio")
  p.add_argument("--frames", type=int, default=FRAMES, help="frames shown (multiple of 16)")
  p.add_argument("--ratio", type=float, default=0.7)
  p.add_argument("--hint", type=float, default=0.0)
  p.add_argument("--strategies", default="", help="comma-separated; default: all registered")
  p.add_argument("--variance", action="store_true", help="also draw the variance dispersion map")
  p.add_argument("--out", default="mask_gallery.png", help="PNG to write")
  p.add_argument("--dpi", type=int, default=110)
  a = p.parse_args(argv)

  strategies = [s.strip() for s in a.strategies.split(",") if s.strip()] or names()
  for s in strategies:
    get(s)  # unknown names fail here, listing the valid ones
  logmel = load_log_mel(a.wav, index=a.index, seed=a.seed, start=a.start, frames=a.frames)
  source = a.wav or f"synthetic clip {a.index} (seed {a.seed})"
  fig = plot_masks(logmel, strategies, jax.random.key(a.seed), ratio=a.ratio, hint=a.hint,
                   variance=a.variance,
                   title=f"{source}: masks at ratio {a.ratio}, seed {a.seed}")
  fig.savefig(a.out, dpi=a.dpi, bbox_inches="tight")
  print(f"wrote {a.out} ({len(strategies)} strategies: {', '.join(strategies)})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
