"""What ``medfm evaluate-extra`` runs (its parser: :mod:`medfm.cli.commands.evaluate_extra`)."""
from __future__ import annotations

from pathlib import Path
from medfm.errors import UsageError
from medfm.io import atomic_write_text, portable_paths, write_json
from medfm.evaluation.compare import compare_predictions, comparison_markdown, load_predictions


def run_compare(args) -> int:
    if args.n_boot < 1:
        raise UsageError("--n-boot must be at least 1")
    a, b = load_predictions(args.results_a), load_predictions(args.results_b)
    res = compare_predictions(a, b, n_boot=args.n_boot, seed=args.seed, source=f"{args.results_a} vs {args.results_b}")
    out = Path(args.out or b["dir"])
    out.mkdir(parents=True, exist_ok=True)
    res = portable_paths(res, out)  # the compared folders relative to OUT: no absolute path of this machine
    write_json(out / "comparison.json", res)
    atomic_write_text(out / "comparison.md", comparison_markdown(res))
    key = next((k for k in ("macro_auroc", "accuracy") if k in res["metrics"]), next(iter(res["metrics"]), None))
    if key:
        v = res["metrics"][key]
        print(f"{key}: A {v['a']:.4f}  B {v['b']:.4f}  diff {v['diff']:+.4f} "
              f"(95% CI {v['ci'][0]:+.4f} to {v['ci'][1]:+.4f}, p={v['p_value']:.3g}); "
              f"{len(res['delong'])} DeLong test(s); wrote {out / 'comparison.md'}")
    return 0
