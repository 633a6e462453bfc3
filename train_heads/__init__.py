"""train_heads package."""
