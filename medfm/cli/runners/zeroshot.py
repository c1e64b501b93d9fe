"""What ``medfm zeroshot`` runs (its parser: :mod:`medfm.cli.commands.zeroshot`)."""
from __future__ import annotations

from medfm.cli.runners.evaluate_clinical import clinical_options

from medfm.cli.common import column_map, data_options, init_overrides
from medfm.cli.inference_args import inference_options
from medfm.evaluation.labels import parse_label_columns
from medfm.evaluation.runs import RunInputs, evaluate_zeroshot


def run(args) -> int:
    inputs = RunInputs(model=args.model, manifest=args.manifest, out=args.out, n_boot=args.n_boot,
                       batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                       init=init_overrides(args), columns=column_map(args, args.model),
                       data={**data_options(args), **inference_options(args)},
                       max_skip_fraction=args.max_skip_fraction)
    run = evaluate_zeroshot(inputs, args.modality, label_column=args.label_column,
                            label_columns=parse_label_columns(args.label_columns), prompts=args.prompts,
                            prototypes=args.prototypes, support_split=args.support_split, split=args.split,
                            text_modality=args.text_modality, clinical=clinical_options(args))
    res = run.result
    print(f"{res.task}: n={res.n} macro AUROC {res.metrics['macro_auroc']:.4f}"
          + (f" accuracy {res.metrics['accuracy']:.4f}" if "accuracy" in res.metrics else "")
          + f"; wrote {run.paths['results']} and {run.paths['report']}")
    return 0
