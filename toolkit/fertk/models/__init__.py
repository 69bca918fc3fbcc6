"""Model architectures (PyTorch reference implementations) and the model registry."""

from fertk.models.registry import ModelCard, get_entry, list_models, load_model, register_model

__all__ = ["ModelCard", "get_entry", "list_models", "load_model", "register_model"]
