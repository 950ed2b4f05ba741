"""The DWM authors' ``random_weighted_mask_with_hint`` (M2D, PyTorch), rewritten from its semantics.

Written here from /work/shared/REFERENCES.md and a reading of the authors' code, for timing
against in the same process; it follows the same steps with the same torch calls, so its cost
is theirs:

1. per-patch weights over the patch's ``P`` values: ``mad`` = mean |x - mean|, or ``variance``
   = ``torch.var`` (unbiased, as theirs; a common factor that does not change the law);
2. ``torch.multinomial(weights + 1e-12, K, replacement=False)`` draws the K masked patches;
3. the visible patches are the complement (a scatter into a boolean mask, then a gather);
4. hint swap, always run (their code runs it at ``h = 0`` too, with empty slices): a random
   permutation of the masked indices (argsort of uniform noise) picks ``int(K * h)`` to reveal,
   and a second one over visible + revealed picks as many to re-mask;
5. result: ``ids [B, N]`` ordered as ``[visible, masked]`` and ``len_keep``.

Input: ``patches: float [B, N, P]`` (their code first unfolds the ``[B, 1, F, T]`` spectrogram
into this with a view/transpose/reshape copy; that copy is data layout, not masking, and is left
out, which can only flatter their timing). ``h >= 1`` (plain random masking) is not needed here.
"""
from __future__ import annotations

import torch


def authors_dwm(patches: torch.Tensor, mask_ratio: float, hint_ratio: float,
                metric: str = "mad") -> tuple[torch.Tensor, int]:
  """``patches: [B, N, P]`` -> ``(ids [B, N] as [visible, masked], len_keep)``."""
  b, n, _ = patches.shape
  len_keep = int(n * (1.0 - mask_ratio))
  num_mask = n - len_keep
  num_unmask = int(num_mask * hint_ratio)
  if metric == "variance":
    weights = torch.var(patches, dim=2)
  elif metric == "mad":
    weights = torch.mean(torch.abs(patches - torch.mean(patches, dim=2, keepdim=True)), dim=2)
  else:
    raise ValueError(f"unknown metric {metric!r}")
  masked = torch.multinomial(weights + 1e-12, num_mask, replacement=False)   # [B, K]
  is_masked = torch.zeros(b, n, dtype=torch.bool, device=patches.device)
  is_masked.scatter_(1, masked, True)
  visible = torch.arange(n, device=patches.device).expand(b, n)[~is_masked].view(b, len_keep)

  order_m = torch.argsort(torch.rand(b, num_mask, device=patches.device), dim=1)
  revealed = torch.gather(masked, 1, order_m[:, :num_unmask])
  kept = torch.gather(masked, 1, order_m[:, num_unmask:])
  pool = torch.cat([visible, revealed], dim=1)                      # [B, len_keep + n_unmask]
  order_v = torch.argsort(torch.rand(b, pool.shape[1], device=patches.device), dim=1)
  remasked = torch.gather(pool, 1, order_v[:, :num_unmask])
  still_visible = torch.gather(pool, 1, order_v[:, num_unmask:])
  return torch.cat([still_visible, kept, remasked], dim=1), len_keep


def ids_to_mask(ids: torch.Tensor, len_keep: int) -> torch.Tensor:
  """``ids [B, N]`` as ``[visible, masked]`` -> ``bool [B, N]``, True = masked."""
  mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
  mask.scatter_(1, ids[:, len_keep:], True)
  return mask
