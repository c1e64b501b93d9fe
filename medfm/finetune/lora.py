"""LoRA / DoRA on the towers of a :class:`~medfm.models.MultiModalModel`, through peft.

The adapters are injected in place with :func:`peft.inject_adapter_in_model`, so the
model stays a ``MultiModalModel`` (``encode`` and ``encode_batch`` keep working); a
:class:`~medfm.finetune.model.FineTunedModel` wraps it with the task head and saves the
adapters alone (or merged, :func:`merge_lora`). Only the towers being fine-tuned are targeted; their base weights are
frozen and stay bit-identical (peft keeps them as ``<module>.base_layer``).

Target presets (patterns matched with ``re.fullmatch`` against module names *inside
a tower*):

====================  =====================================================================
``vit``               trunk attention ``attn.qkv``, ``attn.proj`` and MLP ``mlp.fc1``, ``mlp.fc2``
``vit-attn``          ``attn.qkv``, ``attn.proj`` only
``bert``              BERT-family encoders (BERT, RoBERTa, ESM / Nucleotide Transformer,
                      BarcodeBERT — the ``hf`` tower of text and DNA): ``query``, ``key``,
                      ``value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``
``bert-attn``         ``query``, ``key``, ``value`` only
====================  =====================================================================

``target_modules=None`` (or ``"auto"``) picks ``vit`` for a ``vit`` tower (every
modality, the token-based DNA tower included) and ``bert`` for an ``hf`` tower.
A list of patterns can be given instead (a pattern matches a module whose in-tower
name equals it, ends with ``"." + pattern``, or fully matches it as a regex). Modules that
only serve pretraining (the MAE ``decoder``, MLM heads) are never adapted.

A shared trunk (``trunk.shared: true``) is one module used by several towers: adapting
it for one modality changes the others too. This is reported by :func:`find_target_modules`'
caller through :func:`shared_with`.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError
from .lora_targets import FAMILY_TARGETS, targets_for
from ..errors import CheckpointError

_BLOCK = r"trunk\.blocks\.\d+\."
_LAYER = r"(?:.+\.)?encoder\.layer\.\d+\."

#: target-module presets: regexes over module names relative to a tower.
PRESETS: Dict[str, Tuple[str, ...]] = {
    "vit": (_BLOCK + r"attn\.qkv", _BLOCK + r"attn\.proj", _BLOCK + r"mlp\.fc1", _BLOCK + r"mlp\.fc2"),
    "vit-attn": (_BLOCK + r"attn\.qkv", _BLOCK + r"attn\.proj"),
    "bert": (_LAYER + r"attention\.self\.(?:query|key|value)", _LAYER + r"attention\.output\.dense",
             _LAYER + r"intermediate\.dense", _LAYER + r"output\.dense"),
    "bert-attn": (_LAYER + r"attention\.self\.(?:query|key|value)",),
}

#: parts of a tower that only serve masked-modelling pretraining (never adapted).
PRETRAINING_ONLY = re.compile(r"(?:decoder|mlm_head)(?:\..*)?|(?:.+\.)?cls\.predictions(?:\..*)?")

def _peft():
    """The peft package, imported with the first adapter (it pulls in transformers: about 5 s, which
    loading a base checkpoint through :mod:`medfm.finetune.model` must not pay)."""
    import peft  # deferred: peft imports transformers (seconds); only fine-tuning and adapters need it

    return peft


#: layer types peft's LoRA can adapt (the presets only pick ``nn.Linear``).
SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

TargetSpec = Union[None, str, Sequence[str]]


def default_preset(tower: nn.Module) -> str:
    """``"vit"`` for a tower with a timm trunk, ``"bert"`` for a Hugging Face (``hf``) tower."""
    if hasattr(tower, "trunk") and hasattr(tower.trunk, "blocks"):
        return "vit"
    if hasattr(tower, "mlm") or hasattr(tower, "encoder"):
        return "bert"
    raise ConfigError(f"no LoRA target preset for a {type(tower).__name__}; give lora.target_modules")


def _patterns(tower: nn.Module, target_modules: TargetSpec) -> Tuple[List[str], str]:
    """Regexes for one tower and a label for messages."""
    if target_modules is None or target_modules == "auto":
        families = getattr(tower, "backbone_families", None)  # a library tower's (medfm.finetune.lora_targets)
        targets = targets_for(tower, families) if families else ()
        if targets:
            return list(targets), f"{type(tower).__name__} family preset"
        name = default_preset(tower)
        return list(PRESETS[name]), name
    if isinstance(target_modules, str) and target_modules in FAMILY_TARGETS and target_modules not in PRESETS:
        return list(FAMILY_TARGETS[target_modules]), target_modules  # a library tower family (lora_targets.py)
    if isinstance(target_modules, str):
        if target_modules not in PRESETS:
            raise ConfigError(f"lora.target_modules: unknown preset {target_modules!r}; presets: "
                              f"{', '.join(PRESETS)}, library families {', '.join(FAMILY_TARGETS)} (or a list of "
                                      "module-name patterns)")
        return list(PRESETS[target_modules]), target_modules
    pats = []
    for p in target_modules:
        p = str(p)
        pats.append(rf"(?:.+\.)?{re.escape(p)}|{p}")
    return pats, "custom"


def find_target_modules(model: nn.Module, modalities: Iterable[str], target_modules: TargetSpec = None) -> List[str]:
    """Qualified names (in ``model``) of the layers LoRA adapts in the towers of ``modalities``.

    Args:
        model: a ``MultiModalModel``.
        modalities: the towers being fine-tuned.
        target_modules: ``None``/``"auto"``, a preset name, or a list of patterns (see module docstring).
    Returns:
        Sorted, de-duplicated names as ``model.named_modules()`` spells them (a module
        shared by several towers appears once, under its first name).
    Raises:
        ConfigError: a pattern list that matches no layer of a tower.
    """
    qualified = {id(m): n for n, m in model.named_modules()}  # de-duplicated: first name wins
    names: List[str] = []
    for mod in modalities:
        tower = model.tower(mod)
        pats, label = _patterns(tower, target_modules)
        try:
            rx = re.compile("|".join(f"(?:{p})" for p in pats))
        except re.error as e:
            raise ConfigError(f"lora.target_modules: bad pattern ({e})") from e
        hits = [m for n, m in tower.named_modules()
                if n and rx.fullmatch(n) and not PRETRAINING_ONLY.fullmatch(n) and isinstance(m, SUPPORTED_LAYERS)]
        if not hits:
            raise ConfigError(f"lora.target_modules ({label}) matches no layer of the {mod!r} tower "
                              f"({type(tower).__name__})")
        names.extend(qualified[id(m)] for m in hits)
    return sorted(set(names))


def shared_with(model: nn.Module, modalities: Iterable[str]) -> List[str]:
    """Other towers that share parameters with the towers of ``modalities`` (a shared trunk)."""
    mods = set(modalities)
    ids = {id(p) for m in mods for p in model.tower(m).parameters()}
    return sorted(o for o in model.modalities if o not in mods and any(id(p) in ids for p in model.tower(o).parameters()))


def lora_config(target_names: Sequence[str], r: int = 8, alpha: float = 16, dropout: float = 0.0,
                dora: bool = False):
    """A ``peft.LoraConfig`` over exactly ``target_names`` (qualified module names)."""
    LoraConfig = _peft().LoraConfig

    if int(r) < 1:
        raise ConfigError(f"lora.r must be >= 1, got {r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {dropout}")
    return LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), use_dora=bool(dora),
                      target_modules=list(target_names), bias="none")


def freeze(module: nn.Module) -> None:
    """``requires_grad = False`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def apply_lora(model: nn.Module, modalities: Iterable[str], r: int = 8, alpha: float = 16, dropout: float = 0.0,
               dora: bool = False, target_modules: TargetSpec = None, config=None):
    """Freeze ``model`` and inject LoRA (or DoRA) layers into the towers of ``modalities``.

    Afterwards only the ``lora_A``/``lora_B`` (and DoRA magnitude) parameters require
    grad; for each adapted ``nn.Linear(in, out)`` there are ``r * (in + out)`` of them
    (plus ``out`` with DoRA).

    Args:
        model: a ``MultiModalModel``; modified in place.
        config: a ready ``LoraConfig`` (e.g. read from a checkpoint); the other options are then ignored.
    Returns:
        The ``peft.LoraConfig`` used (its ``target_modules`` are the qualified names).
    """
    inject_adapter_in_model = _peft().inject_adapter_in_model

    if config is None:
        names = find_target_modules(model, list(modalities), target_modules)
        config = lora_config(names, r=r, alpha=alpha, dropout=dropout, dora=dora)
    freeze(model)
    inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return config


def lora_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft tuner layer in ``model`` (de-duplicated)."""
    BaseTunerLayer = _peft().tuners.tuners_utils.BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


#: what ``peft.PeftModel`` puts before a module name of the model it wraps (its ``base_model.model``);
#: ``adapter_model.safetensors`` keys carry it, as ``PeftModel.save_pretrained`` writes them.
PEFT_PREFIX = "base_model.model."


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter weights in peft's file layout, as ``PeftModel.save_pretrained`` writes them.

    Keys are ``base_model.model.<module>.lora_A.weight`` (adapter name removed), so
    ``peft.PeftModel.from_pretrained(base, DIR)`` over the base ``MultiModalModel`` loads every tensor.
    """
    get_peft_model_state_dict = _peft().utils.get_peft_model_state_dict

    own = {n: p for n, p in model.named_parameters()}  # no duplicate names for a shared trunk
    own.update({n: b for n, b in model.named_buffers()})
    sd = get_peft_model_state_dict(model, state_dict=own)
    return {PEFT_PREFIX + k: v.detach().contiguous().clone() for k, v in sd.items()}


def load_lora_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load weights written by :func:`lora_state_dict` into a model prepared by :func:`apply_lora`.

    Keys without the ``base_model.model.`` prefix (adapters written by medfm before it wrote
    peft's own layout) load too: the prefix is optional here.
    """
    set_peft_model_state_dict = _peft().utils.set_peft_model_state_dict

    state_dict = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state_dict.items()}
    result = set_peft_model_state_dict(model, state_dict)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointError(f"adapter weights do not fit the model; unexpected: {sorted(unexpected)[:5]}")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA/DoRA update into its base layer and remove the peft wrappers (in place).

    The merged model has exactly the base architecture (``save_pretrained`` writes the
    same keys as the base checkpoint) and gives the same outputs up to float rounding.
    """
    for name, layer in lora_layers(model):
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def count_parameters(module: nn.Module) -> Tuple[int, int]:
    """``(trainable, total)`` parameter counts; a shared tensor counts once."""
    seen, trainable, total = set(), 0, 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
