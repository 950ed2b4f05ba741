"""dwm-jax: masked-prediction audio SSL in JAX/Flax, built around fast mask sampling."""
__version__ = "0.1.0"
