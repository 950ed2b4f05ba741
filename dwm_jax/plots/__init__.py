"""Plots (matplotlib, no pyplot): kept outside the pure-JAX packages."""
from dwm_jax.plots.masks import load_log_mel, mask_figure, plot_masks, sample_masks

__all__ = ["load_log_mel", "mask_figure", "plot_masks", "sample_masks"]
