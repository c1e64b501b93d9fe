"""Zero-shot classification: prompt sets, prompt ensembling, multi-class, multi-label, prototypes.

Prompt set YAML (``configs/prompts/*.yaml``)::

    name: ptbxl_superclasses
    task: multiclass                 # multiclass (softmax over classes) | multilabel
    templates: ["an ECG showing {label}", "{label}"]      # fill classes given by name
    classes:
      NORM: ["normal ECG", "normal sinus rhythm"]          # explicit prompts
      MI: {label: "myocardial infarction"}                 # a name filled into `templates`
      STTC:                                                # empty: the class key is the name

    # multilabel (CheXzero style: a positive and a negative prompt per finding)
    task: multilabel
    templates: ["{label}"]                   # positive templates
    negative_templates: ["no {label}"]
    classes:
      Atelectasis: {positive: ["atelectasis"], negative: ["no atelectasis"]}
      Edema: {label: "pulmonary edema"}      # both sides from the templates

Ensembling (as open_clip's ``build_zero_shot_classifier``): the text embeddings of a
class's prompts are L2-normalised, averaged and re-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy.special import expit

from medfm.config_files import load_data_file
from medfm.errors import ConfigError, DataError

from .retrieval import split_multi
from .vectors import l2_normalize
from medfm.configs import config_path

EncodeFn = Callable[[List[str]], np.ndarray]  # prompts (P,) -> (P, D)


@dataclass
class PromptSet:
    """Parsed prompt set. ``positive[c]`` are the prompts of class ``c``; ``negative[c]``
    the negative prompts (multi-label only)."""

    name: str
    task: str
    classes: List[str]
    positive: Dict[str, List[str]]
    negative: Dict[str, List[str]] = field(default_factory=dict)


def _fill(templates: Sequence[str], label: str, source: str, cls: str) -> List[str]:
    if not templates:
        return [label]
    out = []
    for t in templates:
        if "{label}" not in t:
            raise ConfigError(f"{source}: template {t!r} (class {cls!r}) has no '{{label}}'")
        out.append(t.replace("{label}", label))
    return out


def _str_list(v: Any, source: str, cls: str, key: str) -> List[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(p, str) and p.strip() for p in v):
        raise ConfigError(f"{source}: class {cls!r}: {key} must be a non-empty list of strings")
    return list(v)


def parse_prompt_set(data: Dict[str, Any], source: str = "prompts") -> PromptSet:
    """Validate a loaded YAML mapping into a :class:`PromptSet` (see module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or not data["classes"]:
        raise ConfigError(f"{source}: a prompt set needs a non-empty 'classes' mapping")
    task = data.get("task", "multiclass")
    if task not in ("multiclass", "multilabel"):
        raise ConfigError(f"{source}: task must be 'multiclass' or 'multilabel', not {task!r}")
    templates = list(data.get("templates") or [])
    neg_templates = list(data.get("negative_templates") or ["no {label}"])
    pos: Dict[str, List[str]] = {}
    neg: Dict[str, List[str]] = {}
    for cls, spec in data["classes"].items():
        cls = str(cls)
        label = cls
        if spec is None or isinstance(spec, str):
            label = spec or cls
            spec = {}
        if isinstance(spec, list):
            pos[cls] = _str_list(spec, source, cls, "prompts")
        elif isinstance(spec, dict):
            unknown = set(spec) - {"label", "prompts", "positive", "negative"}
            if unknown:
                raise ConfigError(f"{source}: class {cls!r}: unknown key(s) {sorted(unknown)}")
            label = str(spec.get("label", label))
            p = spec.get("positive", spec.get("prompts"))
            pos[cls] = _str_list(p, source, cls, "positive") if p is not None else _fill(templates, label, source, cls)
            if task == "multilabel":
                n = spec.get("negative")
                neg[cls] = _str_list(n, source, cls, "negative") if n is not None else _fill(neg_templates, label, source, cls)
        else:
            raise ConfigError(f"{source}: class {cls!r}: expected a list of prompts, a name or a mapping")
        if task == "multilabel" and cls not in neg:
            neg[cls] = _fill(neg_templates, label, source, cls)
    return PromptSet(str(data.get("name", Path(source).stem)), task, list(pos), pos, neg)


def load_prompt_set(path: Any) -> PromptSet:
    """Read and validate a prompt-set YAML file (a local file, else a shipped one: ``chexpert14.yaml``)."""
    p = Path(str(path))
    if not p.is_file():

        for cand in (config_path(str(path)), config_path(f"prompts/{path}")):
            if cand.is_file():
                p = cand
                break
    if not p.is_file():
        raise DataError("prompt file not found", source=str(p))
    data = load_data_file(p, kind="yaml")  # size, nesting and alias expansion bounded
    return parse_prompt_set(data, str(p))


def check_classes(prompts: PromptSet, labels: Sequence[str], source: str = "manifest",
                  column: Optional[str] = None) -> None:
    """Refuse prompt classes absent from ``labels`` and (multi-class) labels without prompts."""
    have = set(map(str, labels))
    missing = [c for c in prompts.classes if c not in have]
    if missing:
        raise DataError(f"prompt set {prompts.name!r} names class(es) {missing} that are not in the labels "
                        f"{sorted(have)}", source=source, field=column)
    if prompts.task == "multiclass":
        extra = sorted(have - set(prompts.classes))
        if extra:
            raise DataError(f"label(s) {extra} have no prompts in prompt set {prompts.name!r}",
                            source=source, field=column)


# --------------------------------------------------------------------- math
def ensemble(prompt_emb: np.ndarray) -> np.ndarray:
    """``(P, D)`` prompt embeddings of one class → ``(D,)``: normalise, mean, re-normalise."""
    return l2_normalize(l2_normalize(prompt_emb).mean(0, keepdims=True))[0]


def build_classifier(encode: EncodeFn, prompt_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """``(C, D)`` class weights from one prompt list per class (one encode call for all prompts)."""
    flat = [p for ps in prompt_lists for p in ps]
    emb = np.asarray(encode(flat), dtype=np.float32)
    out, s = [], 0
    for ps in prompt_lists:
        out.append(ensemble(emb[s:s + len(ps)]))
        s += len(ps)
    return np.stack(out)


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def multiclass_scores(emb: np.ndarray, weights: np.ndarray, logit_scale: float = 100.0) -> np.ndarray:
    """``emb (N, D)``, ``weights (C, D)`` → class probabilities ``(N, C)`` (softmax of scaled cosine)."""
    return _softmax(logit_scale * (l2_normalize(emb) @ l2_normalize(weights).T))


def multilabel_scores(emb: np.ndarray, pos: np.ndarray, neg: np.ndarray, logit_scale: float = 100.0) -> np.ndarray:
    """CheXzero: ``P(finding) = softmax(s·[cos(x, pos_c), cos(x, neg_c)])[0]`` → ``(N, C)``."""
    e = l2_normalize(emb)
    d = logit_scale * (e @ l2_normalize(pos).T - e @ l2_normalize(neg).T)
    return expit(d)


def text_classifier(encode: EncodeFn, prompts: PromptSet) -> Dict[str, np.ndarray]:
    """``{"positive": (C, D)[, "negative": (C, D)]}`` for a prompt set."""
    out = {"positive": build_classifier(encode, [prompts.positive[c] for c in prompts.classes])}
    if prompts.task == "multilabel":
        out["negative"] = build_classifier(encode, [prompts.negative[c] for c in prompts.classes])
    return out


def zeroshot_scores(emb: np.ndarray, classifier: Dict[str, np.ndarray], logit_scale: float = 100.0) -> np.ndarray:
    """Scores ``(N, C)``: softmax probabilities (multi-class) or per-finding probabilities (multi-label)."""
    if "negative" in classifier:
        return multilabel_scores(emb, classifier["positive"], classifier["negative"], logit_scale)
    return multiclass_scores(emb, classifier["positive"], logit_scale)


def class_prototypes(support: np.ndarray, labels: Sequence[int], n_classes: int) -> np.ndarray:
    """Non-text zero-shot: ``(C, D)`` normalised mean of each class's normalised support embeddings."""
    s = l2_normalize(support)
    y = np.asarray(labels).astype(int)
    protos = []
    for c in range(n_classes):
        if not (y == c).any():
            raise DataError(f"class {c} has no support example", source="support set")
        protos.append(ensemble(s[y == c]))
    return np.stack(protos)


def label_targets(values: Sequence[Any], prompts: PromptSet, *, source: str = "manifest",
                  column: Optional[str] = None) -> np.ndarray:
    """Manifest label cells → targets in the prompt set's class order.

    multi-class: ``(N,)`` class indices (a cell must name one class).
    multi-label: ``(N, C)`` 0/1 from cells listing findings separated by ``|`` or ``;``
    (an empty cell = no finding). Refuses prompt classes absent from the labels
    (:func:`check_classes`).
    """
    if prompts.task == "multiclass":
        labels = [None if v is None else str(v) for v in values]
        if any(v is None for v in labels):
            raise DataError("empty label cell(s); drop unlabelled rows first", source=source, field=column)
        check_classes(prompts, sorted(set(labels)), source, column)
        lut = {c: i for i, c in enumerate(prompts.classes)}
        return np.array([lut[v] for v in labels], dtype=np.int64)
    sets = [split_multi(v) for v in values]
    check_classes(prompts, sorted(set().union(*sets)) if sets else [], source, column)
    return np.array([[int(c in s) for c in prompts.classes] for s in sets], dtype=np.int64)
