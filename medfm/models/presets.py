"""Named model presets: the YAML files of ``configs/models/`` (installed as ``medfm.configs``).

The rule (one source, no copy in Python):

* Each file ``configs/models/<stem>.yaml`` is one preset, called ``<stem>``
  (``medfm-tiny``, ``small_3d``, ...); ``models/<stem>.yaml`` names the same file.
* Its ``name:`` is the preset it extends, exactly as ``name`` means in any model config
  (``{"name": "medfm-tiny", "modalities": {...}}``). A file whose ``name`` is its own stem is a
  *root* preset: it extends only the field defaults of :class:`medfm.models.config.ModelConfig`.
  So ``small_3d.yaml`` (``name: medfm-small``, ``depth: 12``) is ``medfm-small`` with 12 blocks.
* A preset's config is ``defaults ⊕ (the preset it extends, resolved the same way) ⊕ the file``
  (a recursive dict merge; the later one wins). A cycle is a :class:`ConfigError`.
* Python presets: :func:`medfm.register_model` (``@register_model("my-model")`` on a function that
  returns a model-config mapping, which may itself extend a preset by ``name``) is the public
  extension point; a registered name is a preset like a file's stem.

Every preset file is checked against the model-config schema when it is read, with the file
named in the message.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import ConfigError
from ..io import deep_merge, load_config_file
from ..registry import MODELS
from .config import validate_model_config
from medfm.configs import config_path

__all__ = ["FilePreset", "register_preset_dir", "preset_config", "preset_description", "PRESET_DIR"]

#: the folder of the shipped presets
PRESET_DIR = "models"


class FilePreset:
    """A preset read from a YAML file: calling it returns the file's model config (checked).

    Attributes:
        path: the YAML file.
        description: the first comment line of the file (what ``medfm info`` shows).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.__name__ = self.path.stem

    @property
    def description(self) -> str:
        try:
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
                if line.strip():
                    break
        except OSError:
            pass
        return ""

    def __call__(self) -> Dict[str, Any]:
        cfg = load_config_file(self.path)
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{self.path}: a model preset must be a mapping")
        try:
            validate_model_config(cfg)
        except ConfigError as e:
            raise ConfigError(f"{self.path}: {e}") from None
        return dict(cfg)

    def __repr__(self) -> str:
        return f"FilePreset({str(self.path)!r})"


def register_preset_dir(folder: Path) -> List[str]:
    """Register every ``*.yaml`` of ``folder`` as a preset named by its stem; returns the names."""
    names = []
    for path in sorted(Path(folder).glob("*.yaml")):
        MODELS.register(path.stem)(FilePreset(path))
        names.append(path.stem)
    return names


def preset_config(name: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """The model config of preset ``name`` with the presets it extends merged beneath it.

    Field defaults are not included (:func:`medfm.models.config.model_defaults` goes below this).

    Raises:
        ConfigError: an unknown preset (naming the available ones) or a cycle of ``name``s.
    """
    seen = list(_seen or [])
    if name in seen:
        raise ConfigError(f"model presets extend each other in a cycle: {' -> '.join(seen + [name])}")
    own = MODELS.get(name)()
    if not isinstance(own, Mapping):
        raise ConfigError(f"model preset {name!r} did not give a mapping (got {type(own).__name__})")
    own = copy.deepcopy(dict(own))
    parent = own.get("name")
    if parent is None or parent == name:
        return own
    return deep_merge(preset_config(str(parent), seen + [name]), own)


def preset_description(name: str) -> str:
    """One line about preset ``name``: a file's first comment, a function's docstring's first line."""
    obj = MODELS.get(name)
    text = getattr(obj, "description", None)
    if text is None:
        text = ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
    return text


def _register_shipped() -> None:

    register_preset_dir(config_path(PRESET_DIR))


_register_shipped()
