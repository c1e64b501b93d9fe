"""What a run could not use, counted in one place: :class:`SkipLedger`.

Every long command that reads a manifest (pretrain, finetune, shard, embed, index build,
evaluate, zeroshot) feeds what it read into a ledger and, at the end, asks it whether the
run learned from anything (:meth:`SkipLedger.check`). A run fails (:class:`UnusableDataError`,
exit code 1, no model card, no "done" line) when

- no row was usable at all;
- an objective had nothing to work on over the whole run (a contrastive objective with no
  pair of modalities present together in any batch, a masked objective with no target):
  :meth:`SkipLedger.add_objective_counts`;
- the **skip fraction** is above the threshold (``data.max_skip_fraction`` in a run or
  fine-tune config, ``--max-skip-fraction`` on the commands without a config; default
  :data:`DEFAULT_MAX_SKIP_FRACTION`).

Rows are counted as read (one count per read: an epoch reads every row once):

- **used**: at least one cell of the run's modalities was read;
- **not applicable**: the row holds none of the run's modalities (every cell empty). These
  rows are *not* skips: a DNA + text model on a cohort that also holds ECG-only rows simply
  does not see them. They are counted apart and never enter the skip fraction;
- **unusable**: at least one present cell could not be read (the row may still be used
  through its other cells). The skip fraction is ``unusable / (used + dropped)``, the share
  of the rows that hold one of the run's modalities which had a cell the run could not use.

Each distinct reason (the message with its sample-specific parts — quoted names, paths,
numbers — blanked) is counted with the first sample id that showed it, so the summary can
say "720 samples: ecg: flat signal ... (e.g. sample 'E0012')". Warnings (a skipped cell, a
reader's flag such as a flat lead) are logged once per sample, modality and message however
many epochs repeat them, and counted every time.
"""
from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ..errors import UnusableDataError
from ..log_summary import RepeatedWarnings

log = logging.getLogger("medfm.data")

#: the default largest share of applicable rows that may have an unusable cell
DEFAULT_MAX_SKIP_FRACTION = 0.5

#: log keys through which an objective reports how much it had to work on in a step
#: (``clip/n_pairs``: modality pairs with ≥ 2 rows; ``masked/n_terms``: modalities with a target; ``gram/n_rows``)
OBJECTIVE_COUNT_KEYS = ("n_pairs", "n_terms", "n_rows")

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATHLIKE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\w.~-]*[/\\])+[\w.#-]*")
_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?")


def reason_key(modality: str, message: str, sample_id: Any = None) -> str:
    """``"<modality>: <message>"`` with what is particular to one sample blanked, so equal causes group.

    The sample id, quoted strings, paths and numbers become ``…`` (a message stays readable:
    ``ecg: cannot read WFDB record …: No such file``)."""
    text = " ".join(str(message).split())
    if sample_id is not None:
        sid = str(sample_id)
        if sid and text.startswith(sid + ": "):
            text = text[len(sid) + 2:]
        if sid:  # the id as a word of its own (an id "a" must not blank every letter a)
            text = re.sub(rf"(?<![\w.-]){re.escape(sid)}(?![\w-])", "…", text)
    if text.startswith(f"{modality}: "):
        text = text[len(modality) + 2:]
    text = _QUOTED.sub("'…'", text)
    text = _PATHLIKE.sub("…", text)
    text = _NUMBER.sub("#", text)
    return f"{modality}: {text[:200]}"


#: samples logged in full per reason (:class:`~medfm.log_summary.RepeatedWarnings`): a skip names each of
#: the first few; a flag (the same note for every sample, e.g. "NIfTI records no modality") is said once.
#: Every sample is still counted.
LOG_FIRST = {"error": 5, "flag": 1}


@dataclass
class _Reason:
    modality: str
    n: int = 0               #: times seen (reads)
    samples: int = 0         #: distinct samples
    example: str = ""        #: the first sample id that showed it
    message: str = ""        #: its full first message


def _parse(entry: Any) -> Tuple[str, str, str]:
    """``(sample id, modality, message)`` of a batch's ``errors``/``flags`` entry."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        return str(entry[0]), str(entry[1]), str(entry[2])
    return "?", "?", str(entry)


@dataclass
class SkipLedger:
    """Counts of what a run read, used, skipped and was warned about (see the module docstring).

    Fed with collated batches (:meth:`add_batch`, what :class:`~medfm.data.MultiModalCollate`
    returns), single dataset items (:meth:`add_item`) or explicit counts (:meth:`add_error`,
    :meth:`add_rows`). ``warn=True`` logs a new (sample, modality, message) once, summarised per
    reason by :attr:`skip_warnings` / :attr:`flag_warnings` (the first ``log_first`` samples of a
    skip reason in full, the first :data:`LOG_FIRST` ``["flag"]`` of a flag, then counts).
    """

    n_rows: int = 0             #: rows read
    n_used: int = 0             #: rows with at least one usable cell
    n_not_applicable: int = 0   #: rows with none of the run's modalities (not skips)
    n_unusable: int = 0         #: rows with at least one present cell that could not be used
    n_skipped: int = 0          #: rows dropped by the collate (unusable or not applicable), as logged before
    n_errors: int = 0           #: unusable cells (modality read errors)
    n_flagged: int = 0          #: reader flags (usable but suspicious input, e.g. a flat lead)
    reasons: Dict[str, _Reason] = field(default_factory=dict)
    flags: Dict[str, _Reason] = field(default_factory=dict)
    objectives: Dict[str, float] = field(default_factory=dict)   #: objective count key → sum over steps
    warn: bool = True
    log_first: int = LOG_FIRST["error"]
    _seen: Set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        #: the summarised logs of skips and of flags, keyed by :func:`reason_key`
        self.skip_warnings = RepeatedWarnings(log, first=self.log_first)
        self.flag_warnings = RepeatedWarnings(log, first=LOG_FIRST["flag"], notices=False)

    # ---------------------------------------------------------------- feeding
    def _note(self, table: Dict[str, _Reason], sid: str, modality: str, message: str, what: str) -> None:
        key = reason_key(modality, message, sid)
        r = table.get(key)
        if r is None:
            r = table[key] = _Reason(modality, example=sid, message=message)
        r.n += 1
        h = zlib.crc32(f"{what}\0{sid}\0{modality}\0{message}".encode())
        if h not in self._seen:
            self._seen.add(h)
            r.samples += 1
            if self.warn:
                warnings = self.skip_warnings if what == "error" else self.flag_warnings
                warnings.warning(key, "%s %s of sample %s: %s", "skipping" if what == "error" else "flagged",
                                 modality, sid, message)

    def add_error(self, sample_id: Any, modality: str, message: str) -> None:
        """One unusable cell (counted; the row's fate is counted by :meth:`add_rows`)."""
        self.n_errors += 1
        self._note(self.reasons, str(sample_id), modality, str(message), "error")

    def add_flag(self, sample_id: Any, modality: str, message: str) -> None:
        """One reader flag (the cell was used)."""
        self.n_flagged += 1
        self._note(self.flags, str(sample_id), modality, str(message), "flag")

    def add_rows(self, *, used: int = 0, not_applicable: int = 0, unusable: int = 0, dropped: int = 0) -> None:
        """Row counts: ``used`` rows had a usable cell, ``not_applicable`` none of the modalities,
        ``unusable`` a cell that could not be used (used or not), ``dropped`` nothing usable but an error."""
        self.n_rows += used + not_applicable + dropped
        self.n_used += used
        self.n_not_applicable += not_applicable
        self.n_unusable += unusable
        self.n_skipped += not_applicable + dropped

    def add_item(self, item: Optional[Mapping[str, Any]]) -> None:
        """One :class:`~medfm.data.ManifestDataset` item (``None`` counts as not applicable)."""
        if item is None:
            self.add_rows(not_applicable=1)
            return
        errors = list(item.get("errors") or ())
        for e in errors:
            self.add_error(*_parse(e))
        for f in item.get("flags") or ():
            self.add_flag(*_parse(f))
        if item.get("skipped"):
            self.add_rows(dropped=1, unusable=1) if errors else self.add_rows(not_applicable=1)
        else:
            self.add_rows(used=1, unusable=int(bool(errors)))

    def add_batch(self, batch: Mapping[str, Any]) -> None:
        """A collated batch (:class:`~medfm.data.MultiModalCollate`): its rows, errors and flags."""
        errors = list(batch.get("errors") or ())
        for e in errors:
            self.add_error(*_parse(e))
        for f in batch.get("flags") or ():
            self.add_flag(*_parse(f))
        n_kept, n_skipped = len(batch.get("id") or ()), int(batch.get("n_skipped", 0))
        if "n_not_applicable" in batch:
            na, unusable = int(batch["n_not_applicable"]), int(batch["n_unusable"])
        else:  # a batch built by hand: rows named in errors are the unusable ones
            erred = {_parse(e)[0] for e in errors}
            unusable = len(erred) if erred != {"?"} else len(errors)
            na = max(0, n_skipped - len(erred - set(map(str, batch.get("id") or ()))))
        self.add_rows(used=n_kept, not_applicable=na, dropped=n_skipped - na, unusable=unusable)

    def add_objective_counts(self, logs: Mapping[str, Any]) -> None:
        """Sum the objectives' count logs (``<objective>/n_pairs`` ...) of one step's record."""
        for k, v in logs.items():
            if k.rpartition("/")[2] in OBJECTIVE_COUNT_KEYS and isinstance(v, (int, float)):
                self.objectives[k] = self.objectives.get(k, 0.0) + float(v)

    def merge(self, other: "SkipLedger") -> "SkipLedger":
        """Add ``other``'s counts (e.g. another rank's); objective sums are kept from ``self``
        (they are already means over ranks)."""
        for name in ("n_rows", "n_used", "n_not_applicable", "n_unusable", "n_skipped", "n_errors", "n_flagged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.reasons, other.reasons), (self.flags, other.flags)):
            for k, r in theirs.items():
                if k in mine:
                    mine[k].n += r.n
                    mine[k].samples += r.samples
                else:
                    mine[k] = _Reason(r.modality, r.n, r.samples, r.example, r.message)
        return self

    # ------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Plain numbers and strings (saved in a training checkpoint; the once-per-sample memory is not)."""
        return {"counts": {k: getattr(self, k) for k in ("n_rows", "n_used", "n_not_applicable", "n_unusable",
                                                         "n_skipped", "n_errors", "n_flagged")},
                "reasons": {k: vars(r) for k, r in self.reasons.items()},
                "flags": {k: vars(r) for k, r in self.flags.items()},
                "objectives": dict(self.objectives)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in (state.get("counts") or {}).items():
            setattr(self, k, int(v))
        self.reasons = {k: _Reason(**r) for k, r in (state.get("reasons") or {}).items()}
        self.flags = {k: _Reason(**r) for k, r in (state.get("flags") or {}).items()}
        self.objectives = {k: float(v) for k, v in (state.get("objectives") or {}).items()}

    # ------------------------------------------------------------ verdict
    @property
    def n_applicable(self) -> int:
        """Rows that hold at least one of the run's modalities."""
        return self.n_rows - self.n_not_applicable

    @property
    def skip_fraction(self) -> float:
        """``unusable / applicable`` rows (0 when no row was applicable)."""
        return self.n_unusable / self.n_applicable if self.n_applicable else 0.0

    def problems(self, max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION) -> List[str]:
        """Why the run learned from nothing (empty when it did not)."""
        out = []
        if self.n_used == 0:
            if self.n_rows == 0:
                out.append("no row was read")
            elif self.n_applicable == 0:
                out.append(f"none of the {self.n_rows} rows read holds any of the run's modalities "
                           "(wrong column names?)")
            else:
                out.append(f"no usable sample: all {self.n_applicable} rows that hold one of the run's modalities "
                           "were unusable")
        elif self.skip_fraction > max_skip_fraction:
            out.append(f"{self.n_unusable} of {self.n_applicable} rows read ({100 * self.skip_fraction:.1f}%) had a "
                       f"cell the run could not use, above the limit of {100 * max_skip_fraction:g}%")
        if self.n_used:
            for key, total in sorted(self.objectives.items()):
                if total <= 0:
                    name, _, what = key.rpartition("/")
                    noun = {"n_pairs": "pair of modalities present together in a batch",
                            "n_terms": "target (no batch held one of its modalities)",
                            "n_rows": "row with all of its modalities"}.get(what, what)
                    out.append(f"objective {name!r} had no {noun} over the whole run ({key} was 0 on every step)")
        return out

    def summary(self, problems: Sequence[str], *, what: str, knob: str, limit: int = 5) -> str:
        """The multi-line report of a failed run: counts, the top reasons with one example each, what to change."""
        lines = [f"{what} learned from nothing usable:"]
        lines += [f"  - {p}" for p in problems]
        lines.append(f"  rows read {self.n_rows}: used {self.n_used}, with an unusable cell {self.n_unusable}, "
                     f"not applicable (none of the run's modalities; not counted as skips) {self.n_not_applicable}")
        top = sorted(self.reasons.items(), key=lambda kv: (-kv[1].samples, -kv[1].n, kv[0]))
        if top:
            lines.append(f"  unusable cells by reason ({len(top)} reason(s); samples, reads):")
            for key, r in top[:limit]:
                lines.append(f"    {r.samples:>6} sample(s), {r.n} read(s)  {key}")
                lines.append(f"           e.g. sample {r.example!r}: {r.message[:300]}")
            if len(top) > limit:
                lines.append(f"    … {len(top) - limit} more reason(s)")
        if self.flags:
            n = sum(r.samples for r in self.flags.values())
            lines.append(f"  flagged (used, but suspicious): {n} sample(s), e.g. "
                         + "; ".join(f"{k} (sample {r.example!r})" for k, r in list(self.flags.items())[:2]))
        lines.append("  what to change:")
        if self.reasons:
            lines.append("    - fix or drop the rows above (`medfm inspect FILE` shows what a reader makes of one file)")
        if any("outside the data root" in k for k in self.reasons):
            lines.append("    - paths refused as outside the data root: set data.root to the folder that holds the data "
                         "(or data.confine_paths: false)")
        if self.n_rows and self.n_applicable == 0 or any("n_pairs" in p or "n_terms" in p or "n_rows" in p
                                                         for p in problems):
            lines.append("    - check that the manifest columns hold the run's modalities (data.columns / --column "
                         "MODALITY=COLUMN) and, for a contrastive objective, that rows hold its modalities together")
        lines.append(f"    - accept more unusable rows with {knob} (now the share above; default "
                     f"{DEFAULT_MAX_SKIP_FRACTION:g})")
        return "\n".join(lines)

    def check(self, *, what: str, knob: str, max_skip_fraction: Optional[float] = None,
              source: Optional[str] = None) -> None:
        """Raise :class:`UnusableDataError` (its ``details`` = :meth:`summary`) when the run learned from nothing.

        Args:
            what: the run, as the summary names it (``"medfm pretrain"``).
            knob: how the user raises the threshold (``"data.max_skip_fraction"``, ``"--max-skip-fraction"``).
            max_skip_fraction: the threshold (``None``: :data:`DEFAULT_MAX_SKIP_FRACTION`).
            source: the manifest or shard set, named in the one-line message.
        """
        limit = DEFAULT_MAX_SKIP_FRACTION if max_skip_fraction is None else float(max_skip_fraction)
        problems = self.problems(limit)
        if problems:
            raise UnusableDataError(problems[0], source=source, details=self.summary(problems, what=what, knob=knob),
                                    record={"problems": problems, **self.state_dict()})

    def record(self) -> Dict[str, Any]:
        """A JSON-ready digest for results files: counts, skip fraction and the top reasons."""
        top = sorted(self.reasons.items(), key=lambda kv: (-kv[1].samples, kv[0]))[:10]
        return {"n_rows": self.n_rows, "n_used": self.n_used, "n_not_applicable": self.n_not_applicable,
                "n_unusable": self.n_unusable, "skip_fraction": round(self.skip_fraction, 6),
                "reasons": [{"reason": k, "samples": r.samples, "reads": r.n, "example": r.example} for k, r in top]}


def ledger_of(used_ids: Iterable[Any], skipped: Iterable[Mapping[str, Any]], absent: Iterable[Any], *,
              modality: str) -> SkipLedger:
    """The ledger of a one-pass embedding: ``used_ids`` embedded, ``skipped`` ``[{"id", "reason"}]``
    unreadable, ``absent`` ids without a cell (not applicable). Nothing is logged (the reader did)."""
    ledger = SkipLedger(warn=False)
    n_used = sum(1 for _ in used_ids)
    skipped = list(skipped)
    for s in skipped:
        ledger.add_error(s.get("id"), modality, s.get("reason", ""))
    ledger.add_rows(used=n_used, not_applicable=sum(1 for _ in absent), dropped=len(skipped),
                    unusable=len(skipped))
    return ledger


__all__ = ["SkipLedger", "ledger_of", "reason_key", "DEFAULT_MAX_SKIP_FRACTION", "OBJECTIVE_COUNT_KEYS"]
