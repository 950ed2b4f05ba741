"""Shared helpers for structure statistics of masks on a grid (not a test module)."""
import numpy as np


def neighbour_pairs(cells: np.ndarray, grid) -> np.ndarray:
  """Number of 4-neighbour pairs with both cells set, per row: ``bool [B, N] -> [B]``."""
  g = cells.reshape(-1, *grid)
  return (g[:, 1:, :] & g[:, :-1, :]).sum((1, 2)) + (g[:, :, 1:] & g[:, :, :-1]).sum((1, 2))
