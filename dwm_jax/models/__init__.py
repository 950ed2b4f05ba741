"""Flax models: the ViT encoder and the masked-token predictor / decoder head."""
from dwm_jax.models.predictor import MaskedPredictor
from dwm_jax.models.vit import MODEL_SIZES, ViTEncoder, encoder_from_config, gather_tokens, sincos_2d

__all__ = ["MODEL_SIZES", "MaskedPredictor", "ViTEncoder", "encoder_from_config", "gather_tokens",
           "sincos_2d"]
