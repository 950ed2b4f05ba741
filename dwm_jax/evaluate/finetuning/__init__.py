"""Fine-tuning an encoder plus a linear head on labeled tasks (``dwm-jax finetune``).

Modules: ``config`` (schema, defaults, validation), ``augment`` (mixup, SpecAugment, patch
dropout), ``model`` (clip embedding, head, layer ids), ``optim`` (optimizers, layer-wise lr
decay), ``data`` (splits, train batches), ``step`` (setup, state, jitted step), ``loop`` (one
run), ``run`` (:func:`finetune` over tasks and seeds), ``cli`` (``dwm-jax finetune``).
"""
