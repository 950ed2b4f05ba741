"""Mask sampling: every strategy as a jit-compiled, exact-count, vectorised function.

Import side effects register the strategies; ``sample(name, ...)`` is the entry point.
"""
from dwm_jax.masking import random as _random  # noqa: F401  (registers "random")
from dwm_jax.masking import dwm as _dwm  # noqa: F401  (registers "dwm")
from dwm_jax.masking import inverse_block as _inverse_block  # noqa: F401  (registers it)
from dwm_jax.masking import block as _block  # noqa: F401  (registers "block")
from dwm_jax.masking import time as _time  # noqa: F401  (registers "time")
from dwm_jax.masking import time_frequency as _time_frequency  # noqa: F401  (registers it)
from dwm_jax.masking import informed as _informed  # noqa: F401  (registers "informed")
from dwm_jax.masking.dwm import dispersion
from dwm_jax.masking.hint import hint_schedule, hint_swap
from dwm_jax.masking.ids import MaskIds, ids_to_mask, mask_to_ids
from dwm_jax.masking.informed import sgim_scores
from dwm_jax.masking.registry import get, names, parse_option, register, resolve_options, sample

__all__ = [
    "MaskIds", "dispersion", "get", "hint_schedule", "hint_swap", "ids_to_mask", "mask_to_ids",
    "names", "parse_option", "register", "resolve_options", "sample", "sgim_scores",
]
