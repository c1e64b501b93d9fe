"""The clinical evaluation options of ``medfm evaluate probe`` and ``medfm zeroshot`` (their flags:
:func:`medfm.cli.commands.evaluate_clinical.add_clinical_args`)."""
from __future__ import annotations

from medfm.errors import UsageError
from medfm.evaluation.calibration import parse_threshold_rule
from medfm.evaluation.curve import parse_ns
from medfm.evaluation.runs_clinical import ClinicalOptions
from medfm.evaluation.subgroups import parse_subgroups


def clinical_options(args):
    """:class:`~medfm.evaluation.runs_clinical.ClinicalOptions` of the parsed flags, or None when none is set."""
    threshold_given = args.threshold != "youden"
    parse_threshold_rule(args.threshold)
    if args.ece_bins < 2 or args.min_subgroup_size < 1:
        raise UsageError("--ece-bins must be at least 2 and --min-subgroup-size at least 1")
    opts = ClinicalOptions(calibrate=args.calibrate or threshold_given, threshold=args.threshold, ece_bins=args.ece_bins,
                           subgroups=parse_subgroups(args.subgroups) if args.subgroups is not None else [],
                           min_subgroup_size=args.min_subgroup_size, leads=list(args.leads or []))
    if hasattr(args, "curve"):
        if args.curve_seeds < 1:
            raise UsageError("--curve-seeds must be at least 1")
        opts.curve, opts.curve_ns, opts.curve_seeds = args.curve, parse_ns(args.curve_ns), args.curve_seeds
        opts.curve_metric, opts.random_twin = args.curve_metric, not args.no_random_twin
    else:
        opts.calibration_split = args.calibration_split
    if not (opts.calibrate or opts.subgroups or opts.leads or opts.curve):
        return None
    return opts
