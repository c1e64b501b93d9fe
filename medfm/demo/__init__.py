"""``medfm demo``: the whole loop on an embedded multimodal cohort, in minutes on a laptop CPU.

Public API::

    from medfm.demo import run_demo, generate_cohort, CohortSpec
    results = run_demo("demo_out", quick=False, seed=0)     # the results.json content
    df = generate_cohort("cohort", CohortSpec(n_patients=40, seed=1))

Modules: :mod:`.cohort` (the documented generator), :mod:`.pipeline` (the loop),
:mod:`.report` (summary table, plots, report.md, results.json), :mod:`.chance` (one line of the
metric-vs-chance table, which both use).
"""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".cohort": ["CLASSES", "PROMPTS", "CohortSpec", "copy_real_files", "generate_cohort"],
    ".pipeline": ["DemoSettings", "run_demo", "settings"],
})

__all__ = ["run_demo", "settings", "DemoSettings", "generate_cohort", "copy_real_files", "CohortSpec",
           "CLASSES", "PROMPTS"]
