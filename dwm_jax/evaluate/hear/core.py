"""HEAR embeddings in numpy, free of any framework: what the torch and TF modules wrap.

Frames follow M2D: one embedding per patch column (16 log-mel frames, 160 ms). The log-mel
front end centres frame ``j`` at ``j * 10`` ms (``center=True``), so the column starting at frame
``s`` is centred at ``(s + (pw - 1) / 2) * 10`` ms: 75, 235, ... ms by default.

A finer timestamp hop of ``h`` log-mel frames (``h`` divides ``pw``) embeds the log-mel again,
shifted: shift ``j`` (``0 <= j < pw / h``) starts its columns at frame ``s_j = s_0 + j * h``
(frames cut off the front, or, for ``s_j < 0``, frames of the dataset mean put before it, the
value M2D pads the last window with), and the columns of all shifts interleave: position
``k = c * (pw / h) + j`` is column ``c`` of shift ``j``. ``s_0 <= 0`` is the earliest start whose
column centre is not before 0 ms, so the first timestamp is within one hop of 0 (35 ms for
``h = 4``); the default frames are the shift with ``s_j = 0``. Each shift costs what the default
frames cost. Only positions centred within the clip are returned: timestamps never pass its end.
Scene embeddings are always M2D's: the mean of the default frames.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dwm_jax.evaluate import embed as embed_lib
from dwm_jax.evaluate.encoder import Encoder

SAMPLE_RATE = embed_lib.SAMPLE_RATE
MEL_HOP_SAMPLES = round(SAMPLE_RATE * embed_lib.HOP_SECONDS)  # 160: one log-mel frame
MEL_HOP_MS = 1000.0 * embed_lib.HOP_SECONDS                   # 10 ms


def allowed_hops_ms(patch_width: int) -> list[float]:
  """Hops the shifted windows can give (ms): ``pw / n`` frames for each ``n`` dividing ``pw``."""
  return [patch_width // n * MEL_HOP_MS for n in range(1, patch_width + 1) if patch_width % n == 0]


def hop_frames_for(patch_width: int, hop_ms: float | None) -> int:
  """``hop_ms`` (``None``: one patch column) -> log-mel frames between timestamps."""
  if hop_ms is None:
    return patch_width
  frames = float(hop_ms) / MEL_HOP_MS
  if not (frames >= 1 and frames.is_integer() and patch_width % int(frames) == 0):
    raise ValueError(f"hop_ms must be one of {allowed_hops_ms(patch_width)} (the {patch_width} "
                     f"log-mel frames of a patch column divided evenly), got {hop_ms}")
  return int(frames)


def first_start(patch_width: int, hop_frames: int) -> int:
  """``s_0``: the earliest column start (frames, <= 0) on the hop grid with centre >= 0."""
  # 2 * centre = 2 s + pw - 1 >= 0 on the grid s = -m h: the largest m with 2 m h <= pw - 1.
  return -hop_frames * ((patch_width - 1) // (2 * hop_frames))


def first_centre_ms(patch_width: int, hop_frames: int) -> float:
  """The first timestamp: below one hop (``pw = 16``: 75 ms for the 160 ms hop, 35 ms for 40 ms)."""
  return (first_start(patch_width, hop_frames) + (patch_width - 1) / 2.0) * MEL_HOP_MS


def num_timestamps(num_samples: int, patch_width: int, hop_frames: int) -> int:
  """Positions ``k`` whose centre ``(s_0 + k h + (pw - 1) / 2) * 160`` samples is in the clip."""
  # Doubled to stay in integers: 2 * centre = (2 s_0 + 2 k h + pw - 1) * 160 <= 2 S.
  first2 = 2 * first_start(patch_width, hop_frames) + patch_width - 1
  room = 2 * int(num_samples) - first2 * MEL_HOP_SAMPLES
  return 0 if room < 0 else room // (2 * hop_frames * MEL_HOP_SAMPLES) + 1


def timestamps_ms(num_samples: int, patch_width: int, hop_frames: int) -> np.ndarray:
  """Centres (ms, float32) of the frame embeddings of a clip of ``num_samples`` at 16 kHz."""
  k = np.arange(num_timestamps(num_samples, patch_width, hop_frames))
  return (first_centre_ms(patch_width, hop_frames) + k * hop_frames * MEL_HOP_MS
          ).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class HearCore:
  """An encoder and the HEAR options: timestamp hop (log-mel frames) and rows of windows per JAX
  call."""
  encoder: Encoder
  hop_frames: int
  batch_size: int = 32

  sample_rate = SAMPLE_RATE

  def __post_init__(self):
    pw = self.encoder.patch_size[1]
    if self.hop_frames < 1 or pw % self.hop_frames:
      raise ValueError(f"hop_frames must divide the patch width {pw}, got {self.hop_frames}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")

  @property
  def embedding_size(self) -> int:
    return int(self.encoder.embedding_size)

  @property
  def hop_ms(self) -> float:
    return self.hop_frames * MEL_HOP_MS


def check_audio(audio: np.ndarray) -> np.ndarray:
  """``[n_sounds, n_samples]`` float samples at 16 kHz -> float32; a ValueError saying why not."""
  audio = np.asarray(audio)
  if audio.ndim != 2 or audio.shape[1] == 0:
    raise ValueError(f"audio must be [n_sounds, n_samples] with n_samples > 0 (mono, "
                     f"{SAMPLE_RATE} Hz), got shape {audio.shape}")
  if not np.issubdtype(audio.dtype, np.floating):
    raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
  audio = audio.astype(np.float32, copy=False)
  if not np.isfinite(audio).all():
    raise ValueError("audio contains NaN or Inf samples")
  return audio


def _logmels(audio: np.ndarray) -> list[np.ndarray]:
  return [embed_lib.to_logmel(a, SAMPLE_RATE) for a in audio]


def scene_embeddings(core: HearCore, audio: np.ndarray) -> np.ndarray:
  """``audio: [n, S]`` -> ``[n, E]`` float32: each sound's mean frame embedding (M2D)."""
  audio = check_audio(audio)
  clips = embed_lib.embed_clips(core.encoder, _logmels(audio), batch_size=core.batch_size)
  return np.asarray(clips, np.float32).reshape(len(audio), core.embedding_size)


def _shift(x: np.ndarray, start: int, fill: float) -> np.ndarray:
  """Raw log-mel ``[F, T]`` -> the one whose frame 0 is frame ``start`` of ``x`` (may be < 0)."""
  if start >= 0:
    return x[:, start:]
  return np.concatenate([np.full((x.shape[0], -start), fill, x.dtype), x], axis=1)


def timestamp_embeddings(core: HearCore, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``audio: [n, S]`` -> ``(embeddings [n, K, E], timestamps [n, K] ms)``, float32."""
  audio = check_audio(audio)
  n, num_samples = audio.shape
  pw, h = core.encoder.patch_size[1], core.hop_frames
  ts = timestamps_ms(num_samples, pw, h)
  k = len(ts)
  if k == 0:
    raise ValueError(f"clips of {num_samples} samples ({1000 * num_samples / SAMPLE_RATE:.1f} ms) "
                     f"end before the first frame centre ({first_centre_ms(pw, h):g} ms): no "
                     "timestamp lies within them; pad them (with zeros) to be longer")
  per_col = pw // h
  shifts = min(per_col, k)  # a shift whose first column is past the end adds nothing
  cols = -(-k // per_col)
  frames = np.zeros((n, cols, per_col, core.embedding_size), np.float32)
  if n:
    s0, mels = first_start(pw, h), _logmels(audio)
    fill = float(core.encoder.norm_mean)  # normalizes to 0
    shifted = [_shift(m, s0 + j * h, fill) for j in range(shifts) for m in mels]
    out = embed_lib.embed_logmels(core.encoder, shifted, batch_size=core.batch_size)
    for idx, (fr, _) in enumerate(out):
      j, i = divmod(idx, n)
      frames[i, :min(cols, len(fr)), j] = fr[:cols]
  emb = frames.reshape(n, cols * per_col, -1)[:, :k]
  return emb, np.broadcast_to(ts, (n, k)).copy()

