"""End-to-end: ``medfm embed | zeroshot | index build | search | evaluate`` on a tiny random model.

Uses the test-only ``toy``/``toyb`` modalities of conftest.py and the real ``text`` adapter
with a WordPiece tokenizer fitted on the manifest's reports.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

import medfm
from medfm.cli import main
from medfm.evaluation.embed import load_embeddings
from medfm.evaluation.index import model_fingerprint

N_PATIENTS = 16


def _signal(rng, label):
    t = np.linspace(-1, 1, 32)
    base = t if label == "up" else -t
    x = np.stack([base, base ** 2]) + 0.05 * rng.normal(size=(2, 32))
    return ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in x)


def _make_model(directory, seed, texts):
    torch.manual_seed(seed)
    text = medfm.get_modality("text", vocab_size=120, min_frequency=1, max_length=16,
                              hf_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                         "intermediate_size": 64})
    text.fit(texts)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}, "toyb": {}}},
                               adapters={"text": text})
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(N_PATIENTS):
        for v in range(2):
            label = "up" if (p + v) % 2 == 0 else "down"
            sig = _signal(rng, label)
            rows.append({"id": f"s{p}_{v}", "patient_id": f"P{p:02d}",
                         "split": "test" if p >= 12 else "train", "toy": sig, "toyb": sig,
                         "text": "rising signal report" if label == "up" else "falling signal report",
                         "label": label})
    rows[1]["toy"] = "not numbers"   # unreadable sample
    rows[2]["toyb"] = None           # absent modality
    df = pd.DataFrame(rows)
    manifest = root / "manifest.csv"
    df.to_csv(manifest, index=False)
    texts = list(df["text"]) + ["rising", "falling", "signal"]
    model_a = _make_model(root / "model_a", 0, texts)
    model_b = _make_model(root / "model_b", 1, texts)
    prompts = root / "prompts.yaml"
    prompts.write_text("task: multiclass\ntemplates: ['{label} signal']\n"
                       "classes:\n  up: {label: rising}\n  down: {label: falling}\n")
    return {"root": root, "manifest": manifest, "df": df, "a": model_a, "b": model_b, "prompts": prompts}


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_embed_writes_ids_embeddings_and_skipped(setup, capsys):
    out = setup["root"] / "toy.safetensors"
    rc, o, err = _run(capsys, "embed", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                      "--out", out, "--no-progress")
    assert rc == 0, err
    assert "s0_1" in err  # the unreadable sample is named
    e = load_embeddings(out)
    assert len(e.ids) == len(setup["df"]) - 1 and "s0_1" not in e.ids
    assert [s["id"] for s in e.skipped] == ["s0_1"]
    assert e.emb.dtype == np.float32 and e.emb.shape == (len(e.ids), 64)
    np.testing.assert_allclose(np.linalg.norm(e.emb, axis=1), 1, rtol=1e-5)
    with safe_open(str(out), framework="numpy") as f:
        assert f.metadata()["model_fingerprint"] == model_fingerprint(setup["a"])
    # the file holds exactly what the model computes for those rows
    model = medfm.load_pretrained(setup["a"]).eval()
    ad = model.adapters["toy"]
    rows = setup["df"].set_index("id").loc[e.ids[:4]]
    with torch.no_grad():
        ref = model.encode("toy", ad.collate([ad.load(v) for v in rows["toy"]])["x"]).numpy()
    np.testing.assert_allclose(e.emb[:4], ref, rtol=1e-4, atol=1e-5)


def test_zeroshot_text_and_prototypes(setup, capsys):
    out = setup["root"] / "zs"
    rc, o, err = _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                      "--label-column", "label", "--prompts", setup["prompts"], "--out", out, "--n-boot", 50,
                      "--no-progress")
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())
    assert rec["task"] == "zeroshot-multiclass" and rec["classes"] == ["up", "down"]
    assert rec["n"] == len(setup["df"]) - 1 and rec["skipped_ids"] == ["s0_1"]
    assert rec["model"]["fingerprint"] == model_fingerprint(setup["a"])
    import hashlib
    assert rec["manifest"]["sha256"] == hashlib.sha256(setup["manifest"].read_bytes()).hexdigest()
    lo, hi = rec["ci"]["accuracy"]
    assert lo <= rec["metrics"]["accuracy"] <= hi
    for png in ("roc.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in (out / "report.md").read_text()
    # prototypes from the train split: the two ramps are far apart even for a random encoder
    out2 = setup["root"] / "proto"
    rc, o, err = _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                      "--label-column", "label", "--prototypes", "--split", "test", "--out", out2, "--n-boot", 20,
                      "--no-progress")
    assert rc == 0, err
    rec2 = json.loads((out2 / "results.json").read_text())
    assert rec2["n"] == 8 and rec2["metrics"]["accuracy"] > 0.5


def test_zeroshot_bad_inputs(setup, capsys):
    bad = setup["root"] / "bad_prompts.yaml"
    bad.write_text("classes:\n  up: [rising]\n  down: [falling]\n  sideways: [flat]\n")
    rc, _, err = _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                      "--label-column", "label", "--prompts", bad, "--out", setup["root"] / "x", "--no-progress")
    assert rc == 1 and "sideways" in err
    rc, _, err = _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                      "--label-column", "diagnosis", "--prompts", setup["prompts"], "--out", setup["root"] / "x")
    assert rc == 1 and "diagnosis" in err
    rc, _, err = _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "ct",
                      "--label-column", "label", "--prompts", setup["prompts"], "--out", setup["root"] / "x")
    assert rc == 2 and "ct" in err


def test_index_build_and_search(setup, capsys):
    ix = setup["root"] / "index"
    rc, o, err = _run(capsys, "index", "build", "--model", setup["a"], "--manifest", setup["manifest"],
                      "--modality", "toyb", "--out", ix, "--label-columns", "label", "--no-progress")
    assert rc == 0, err
    info = json.loads((ix / "index.json").read_text())
    assert info["kind"] == "flat" and info["n"] == len(setup["df"]) - 1  # one toyb cell is empty
    assert info["model_fingerprint"] == model_fingerprint(setup["a"])
    meta = pd.read_parquet(ix / "metadata.parquet")
    # nothing else from the manifest (no PHI columns); the hidden self-exclusion columns hold the
    # manifest's salted patient id and a hash of file cells (inline cells: none)
    assert list(meta.columns) == ["id", "label", "_patient", "_sample"]
    assert list(meta["_patient"]) == [str(p) for p in setup["df"].set_index("id").loc[meta["id"], "patient_id"]]
    assert meta["_sample"].isna().all()
    # a gallery item's own value as query comes back first with cosine ≈ 1
    row = setup["df"].iloc[5]
    q = setup["root"] / "query.txt"
    q.write_text(row["toyb"])
    rc, o, err = _run(capsys, "search", "--index", ix, "--query", q, "-k", 3, "--json")
    assert rc == 0, err
    res = json.loads(o)["results"]
    assert len(res) == 3 and res[0]["id"] == row["id"] and res[0]["label"] == row["label"]
    assert res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert res[0]["score"] >= res[1]["score"] >= res[2]["score"]
    # text query through the text tower: plain table output
    rc, o, err = _run(capsys, "search", "--index", ix, "--text", "rising signal", "-k", 2)
    assert rc == 0, err
    assert o.splitlines()[0].split("\t") == ["rank", "id", "score", "label"] and len(o.splitlines()) == 3
    # another model is refused, naming both fingerprints
    rc, _, err = _run(capsys, "search", "--index", ix, "--query", q, "--model", setup["b"])
    assert rc == 1 and model_fingerprint(setup["a"])[:16] in err and model_fingerprint(setup["b"])[:16] in err
    # a query file that cannot be read
    rc, _, err = _run(capsys, "search", "--index", ix, "--query", setup["root"] / "nope.txt")
    assert rc == 1 and "nope.txt" in err
    bad = setup["root"] / "bad_query.txt"
    bad.write_text("definitely not a signal")
    rc, _, err = _run(capsys, "search", "--index", ix, "--query", bad)
    assert rc == 1 and "bad_query.txt" in err


def test_index_empty_gallery(setup, capsys):
    df = setup["df"].copy()
    df["toyb"] = None
    m = setup["root"] / "empty.csv"
    df.to_csv(m, index=False)
    rc, _, err = _run(capsys, "index", "build", "--model", setup["a"], "--manifest", m, "--modality", "toyb",
                      "--out", setup["root"] / "ix_empty", "--no-progress")
    assert rc == 1 and "empty gallery" in err


def test_evaluate_retrieval(setup, capsys):
    out = setup["root"] / "ret"
    rc, o, err = _run(capsys, "evaluate", "retrieval", "--model", setup["a"], "--manifest", setup["manifest"],
                      "--query-modality", "toy", "--gallery-modality", "toyb", "--out", out, "--n-boot", 30,
                      "--no-progress")
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())
    m = rec["metrics"]
    for d in ("toy_to_toyb", "toyb_to_toy"):
        for k in ("R@1", "R@5", "R@10", "MRR", "mAP", "median_rank", "mean_rank"):
            assert f"{d}_{k}" in m
    # toy and toyb cells hold the same signal and both towers are random but distinct: compare with
    # a recomputation from `medfm embed` outputs
    from medfm.evaluation.retrieval import cross_modal_retrieval
    e = {}
    for mod in ("toy", "toyb"):
        path = setup["root"] / f"{mod}_r.safetensors"
        assert _run(capsys, "embed", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", mod,
                    "--out", path, "--no-progress")[0] == 0
        e[mod] = load_embeddings(path)
    ref = cross_modal_retrieval(e["toy"].emb, e["toyb"].emb, [[i] for i in e["toy"].ids],
                                [[i] for i in e["toyb"].ids], "toy", "toyb")
    for k in ("toy_to_toyb_R@1", "toyb_to_toy_MRR", "toy_to_toyb_mAP"):
        assert m[k] == pytest.approx(ref[k])
    # s0_2 has no toyb cell (its toy query has no match); s0_1's toy is unreadable (its toyb item has none)
    assert m["toy_to_toyb_n_no_match"] == 1 and m["toyb_to_toy_n_no_match"] == 1
    assert (out / "recall_at_k.png").is_file()


def test_evaluate_probe_and_leak(setup, capsys):
    out = setup["root"] / "probe"
    rc, o, err = _run(capsys, "evaluate", "probe", "--model", setup["a"], "--manifest", setup["manifest"],
                      "--modality", "toy", "--label-column", "label", "--out", out, "--n-boot", 30,
                      "--shots", "1,2", "--few-shot-seeds", 3, "--knn-k", 3, "--no-progress")
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())
    assert rec["n_test"] == 8 and rec["n_train"] + rec["n_val"] == len(setup["df"]) - 1 - 8
    assert 0 <= rec["metrics"]["linear/accuracy"] <= 1 and "fewshot/2shot_accuracy_mean" in rec["metrics"]
    lo, hi = rec["ci"]["knn/accuracy"]
    assert lo <= rec["metrics"]["knn/accuracy"] <= hi
    leaky = setup["df"].copy()
    leaky.loc[leaky["id"] == "s13_0", "split"] = "train"  # P13 now straddles train and test
    m = setup["root"] / "leaky.csv"
    leaky.to_csv(m, index=False)
    rc, _, err = _run(capsys, "evaluate", "probe", "--model", setup["a"], "--manifest", m, "--modality", "toy",
                      "--label-column", "label", "--out", setup["root"] / "p2", "--no-progress")
    assert rc == 1 and "P13" in err


def test_evaluate_bioscan_seen_unseen(setup, capsys):
    """Seen-species queries are copies of key signals (nearest key = same specimen); unseen species
    cannot be named at species rank but share the genus of their closest key."""
    rng = np.random.default_rng(5)
    rows = []
    for sp in range(4):
        t = np.linspace(-1, 1, 32) * (sp + 1)
        sig = ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in np.stack([np.sin(t * 2), np.cos(t * 3)]))
        genus = "G0" if sp < 2 else "G1"
        for split in (["train", "test"] if sp < 3 else ["test"]):  # species 3 is never in the key set
            rows.append({"id": f"{split}{sp}", "patient_id": f"x{sp}{split}", "split": split, "toy": sig,
                         "order_name": "O", "genus_name": genus, "species_name": f"sp{sp}"})
    m = setup["root"] / "bioscan.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    out = setup["root"] / "bioscan"
    rc, o, err = _run(capsys, "evaluate", "bioscan", "--model", setup["a"], "--manifest", m, "--query-modality", "toy",
                      "--ranks", "order_name,genus_name,species_name", "--out", out, "--no-progress")
    assert rc == 0, err
    met = json.loads((out / "results.json").read_text())["metrics"]
    assert met["seen/n"] == 3 and met["unseen/n"] == 1
    assert met["seen/species_name/micro"] == 1.0 and met["seen/species_name/macro"] == 1.0
    assert met["unseen/species_name/micro"] == 0.0 and met["unseen/order_name/micro"] == 1.0
    assert (out / "accuracy_by_rank.png").is_file()


def test_index_build_search_parameters(setup, capsys):
    """--nprobe / --ef-search are recorded and applied; a mismatch with the index kind is a usage error."""
    ix = setup["root"] / "index_hnsw"
    rc, o, err = _run(capsys, "index", "build", "--model", setup["a"], "--manifest", setup["manifest"],
                      "--modality", "toyb", "--out", ix, "--kind", "hnsw", "--ef-search", 7, "--no-progress")
    assert rc == 0, err
    assert json.loads((ix / "index.json").read_text())["params"]["efSearch"] == 7
    from medfm.evaluation.index import VectorIndex
    import faiss

    assert faiss.downcast_index(VectorIndex.load(ix).index).hnsw.efSearch == 7
    rc, _, err = _run(capsys, "index", "build", "--model", setup["a"], "--manifest", setup["manifest"],
                      "--modality", "toyb", "--out", setup["root"] / "x", "--nprobe", 4, "--no-progress")
    assert rc == 2 and "--nprobe applies to a ivf index" in err


def _assert_close(a, b, path):
    """Nested dicts/lists of numbers and strings equal to float tolerance (pytest.approx takes no nesting)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_cli_records_equal_the_task_functions(setup, capsys):
    """`evaluate retrieval` and `zeroshot --prototypes` write what evaluation.tasks returns on the
    embeddings `medfm embed` writes for the same rows."""
    from medfm.evaluation import tasks
    from medfm.evaluation.embed import logit_scale
    from medfm.evaluation.probes import encode_labels
    from medfm.evaluation.zeroshot import class_prototypes

    root, df = setup["root"], setup["df"].set_index("id")
    e = {}
    for mod in ("toy", "toyb"):
        path = root / f"{mod}_t.safetensors"
        assert _run(capsys, "embed", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", mod,
                    "--out", path, "--no-progress")[0] == 0
        e[mod] = load_embeddings(path)
    out = root / "ret_eq"
    assert _run(capsys, "evaluate", "retrieval", "--model", setup["a"], "--manifest", setup["manifest"],
                "--query-modality", "toy", "--gallery-modality", "toyb", "--match", "patient", "--out", out,
                "--n-boot", 40, "--seed", 3, "--no-progress")[0] == 0
    rec = json.loads((out / "results.json").read_text())
    pq, pg = df.loc[e["toy"].ids, "patient_id"].tolist(), df.loc[e["toyb"].ids, "patient_id"].tolist()
    ref = tasks.run_retrieval(e["toy"].emb, e["toyb"].emb, pq, pg, query_groups=pq, gallery_groups=pg,
                              names=("toy", "toyb"), n_boot=40, seed=3).to_dict()
    for key in ("metrics", "ci", "chance", "n", "n_gallery", "settings", "ci_method"):
        _assert_close(json.loads(json.dumps(ref[key])), rec[key], key)

    out = root / "zs_eq"
    assert _run(capsys, "zeroshot", "--model", setup["a"], "--manifest", setup["manifest"], "--modality", "toy",
                "--label-column", "label", "--prototypes", "--out", out, "--n-boot", 40, "--no-progress")[0] == 0
    rec = json.loads((out / "results.json").read_text())
    split = df.loc[e["toy"].ids, "split"].to_numpy()
    labels = df.loc[e["toy"].ids, "label"].tolist()
    y_all, classes = encode_labels(labels)
    sup, ev = split == "train", split != "train"
    W = class_prototypes(e["toy"].emb[sup], y_all[sup], len(classes))
    ref = tasks.run_zeroshot(e["toy"].emb[ev], y_all[ev], {"positive": W}, classes=classes,
                             groups=df.loc[np.asarray(e["toy"].ids)[ev], "patient_id"].tolist(),
                             logit_scale=logit_scale(medfm.load_pretrained(setup["a"])), n_boot=40,
                             task="zeroshot-prototypes").to_dict()
    for key in ("metrics", "ci", "chance", "n", "classes"):
        _assert_close(json.loads(json.dumps(ref[key])), rec[key], key)
