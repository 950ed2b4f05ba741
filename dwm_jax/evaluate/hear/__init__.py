"""The HEAR 2021 API module (``python -m hearvalidator.validate dwm_jax.evaluate.hear ...``).

``core``: the embeddings and timestamps in numpy; ``api``: ``load_model`` and the two embedding
functions; ``torch_module`` / ``tf_module``: the framework modules ``load_model`` returns.
"""
from dwm_jax.evaluate.hear.api import get_scene_embeddings, get_timestamp_embeddings, load_model

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
