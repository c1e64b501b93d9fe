"""Options shared by ``medfm evaluate probe`` and ``medfm zeroshot``: calibration and an operating threshold,
subgroups, partial ECG inputs, and (probe) the label-efficiency curve. No command of its own."""
from __future__ import annotations



def add_clinical_args(p, *, curve: bool) -> None:
    g = p.add_argument_group("calibration, subgroups, partial inputs" + (", label efficiency" if curve else ""))
    g.add_argument("--calibrate", action="store_true",
                   help="expected calibration error (raw and after temperature scaling fitted on validation rows) "
                        "with patient-bootstrap intervals, reliability.png, and test sensitivity/specificity/PPV/NPV "
                        "at a threshold chosen on validation")
    g.add_argument("--threshold", default="youden", metavar="RULE",
                   help="operating-threshold rule on validation: youden (max TPR - FPR) or sensitivity:T (the highest "
                        "threshold reaching sensitivity T); a rule other than youden implies --calibrate")
    g.add_argument("--ece-bins", type=int, default=15)
    g.add_argument("--subgroups", default=None, metavar="COL[:RULE],...",
                   help="metrics per subgroup of manifest columns with the worst-group gap; numeric columns in "
                        "decades (names with 'age') or quartiles, or COL:decade|quartile|value|E1,E2,...")
    g.add_argument("--min-subgroup-size", type=int, default=20,
                   help="groups with fewer rows are listed as too small, without metrics")
    g.add_argument("--leads", action="append", default=None, metavar="SPEC",
                   help="ECG: re-run with only these leads (others absent), repeatable: I | I,II | limb | precordial "
                        "| any list; one table row per subset")
    if curve:
        g.add_argument("--curve", action="store_true",
                       help="label-efficiency curve: linear probes on n labelled examples per class (patient-grouped "
                            "draws over seeds) for the model, its random-weight twin and --baseline; crossover n")
        g.add_argument("--curve-ns", default=None, metavar="1,2,5,...,all",
                       help="n per class (default 1,2,5,10,20,50,100,200,500,all)")
        g.add_argument("--curve-seeds", type=int, default=5)
        g.add_argument("--curve-metric", default="macro_auroc", choices=("macro_auroc", "balanced_accuracy", "accuracy"))
        g.add_argument("--no-random-twin", action="store_true", help="leave the random-weight twin out of the curve")
    else:
        g.add_argument("--calibration-split", default="val",
                       help="rows (not evaluated) that fit the temperature and the threshold (default: val)")
