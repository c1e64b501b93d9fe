"""Non-learned baselines of the real-data suite — the encoders of :mod:`medfm.evaluation.baselines`.

Kept as a module so the blocks' imports stay short; the implementations live in
:mod:`medfm.evaluation.baselines` (also behind ``medfm evaluate ... --baseline``), so the
suite and the CLI compute the same numbers.
"""
from medfm.evaluation.baselines import (  # noqa: F401
    ECG_LEADS,
    EcgFeatureEncoder,
    KmerEncoder,
    TfidfEncoder,
    ecg_feature_names,
    ecg_features,
    get_baseline,
    kmer_frequencies,
    r_peaks,
    tfidf_embeddings,
)
