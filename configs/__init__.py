"""Shipped YAML configs (model presets, pretraining recipes, prompt sets)."""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``config_path("prompts/chexpert14.yaml")``."""
    return CONFIG_DIR / name
