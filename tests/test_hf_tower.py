"""The engine's Hugging Face tower: local loading, safetensors round-trip, BERT masking, loss, pooling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from medfm.errors import CheckpointError, ConfigError  # noqa: E402
from medfm.models.hf_tower import HFTower, bert_mlm_mask  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SPECIAL = [0, 1, 2, 3, 4]


def _cfg(**kw):
    cfg = {"hf_config": dict(SMALL), "vocab_size": 50, "pool": "cls", "mask_id": 1, "pad_id": 0,
           "special_ids": SPECIAL, "masked": {"kind": "mlm", "mask_ratio": 0.15}}
    cfg.update(kw)
    return cfg


def _batch(B=3, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, 50, (B, L), generator=g)
    x[:, 0] = 2
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 8:] = 0
    x[1, 8:] = 0
    return x, mask


def test_loads_saved_bert_for_masked_lm_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=50, **SMALL)).eval()
    assert ref.cls.predictions.decoder.weight is ref.bert.embeddings.word_embeddings.weight  # tied on disk
    ref.save_pretrained(tmp_path / "bert")
    tower = HFTower(_cfg(model_dir=str(tmp_path / "bert"), hf_config={})).eval()
    assert tower.width == 32 and tower.vocab_size == 50
    x, mask = _batch()
    with torch.no_grad():
        want = ref.bert(input_ids=x, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(tower.forward_features(x, mask), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tower.mlm(input_ids=x, attention_mask=mask).logits,
                                   ref(input_ids=x, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)


def test_state_dict_has_no_shared_tensors_and_roundtrips_through_safetensors(tmp_path):
    torch.manual_seed(1)
    tower = HFTower(_cfg()).eval()
    sd = tower.state_dict()
    ptrs = [t.data_ptr() for t in sd.values()]
    assert len(ptrs) == len(set(ptrs))
    save_file(sd, str(tmp_path / "t.safetensors"))
    torch.manual_seed(2)
    other = HFTower(_cfg()).eval()
    x, mask = _batch()
    assert not torch.allclose(other(x, mask), tower(x, mask))
    other.load_state_dict(load_file(str(tmp_path / "t.safetensors")), strict=True)
    torch.testing.assert_close(other(x, mask), tower(x, mask))


def test_bert_masking_rates_and_exclusions():
    torch.manual_seed(3)
    B, L, V = 64, 200, 100
    x = torch.randint(5, V, (B, L))
    x[:, 0], x[:, -1] = 2, 3
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, 150:] = 0
    x[:, 150:] = 0
    g = torch.Generator().manual_seed(0)
    inputs, chosen = bert_mlm_mask(x, mask, mask_ratio=0.15, mask_id=1, vocab_size=V, special_ids=SPECIAL, generator=g)
    n_cand = 149  # real, non-special positions per row (1..149)
    assert torch.all(chosen.sum(1) == round(0.15 * n_cand))
    assert not chosen[:, 0].any() and not chosen[:, 150:].any()
    assert torch.equal(inputs[~chosen], x[~chosen])
    n = chosen.sum().item()
    frac_mask = (inputs[chosen] == 1).float().mean().item()
    changed = chosen & (inputs != x) & (inputs != 1)
    frac_rand = changed.sum().item() / n
    sd = (0.1 * 0.9 / n) ** 0.5
    assert abs(frac_mask - 0.8) < 5 * (0.8 * 0.2 / n) ** 0.5
    assert abs(frac_rand - 0.1) < 5 * sd + 0.01  # a random draw equal to the original counts as kept
    assert not torch.isin(inputs[changed], torch.tensor(SPECIAL)).any()
    # 50 % (BarcodeBERT) on rows of different length
    _, ch50 = bert_mlm_mask(x, mask, mask_ratio=0.5, mask_id=1, vocab_size=V, special_ids=SPECIAL)
    assert torch.all(ch50.sum(1) == round(0.5 * n_cand))


def test_masked_loss_equals_reference_cross_entropy():
    torch.manual_seed(4)
    tower = HFTower(_cfg()).eval()
    x, mask = _batch(B=4, L=16, seed=5)
    out = tower.masked_loss(x, mask, mask_ratio=0.3, generator=torch.Generator().manual_seed(7))
    inputs, chosen = bert_mlm_mask(x, mask, mask_ratio=0.3, mask_id=1, vocab_size=50, special_ids=SPECIAL,
                                   generator=torch.Generator().manual_seed(7))
    logits = tower.mlm(input_ids=inputs, attention_mask=mask).logits
    ref = F.cross_entropy(logits.reshape(-1, 50), torch.where(chosen, x, -100).reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out["loss"], ref)
    assert out["n_masked"] == int(chosen.sum()) > 0
    out["loss"].backward()
    assert tower.mlm.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_pooling():
    torch.manual_seed(5)
    x, mask = _batch()
    cls_t = HFTower(_cfg(pool="cls")).eval()
    tok = cls_t.forward_features(x, mask)
    torch.testing.assert_close(cls_t.pool(tok, mask), tok[:, 0])
    mean_t = HFTower(_cfg(pool="mean"))
    m = mask.float()
    ref = torch.stack([(tok[i] * m[i, :, None]).sum(0) / m[i].sum() for i in range(len(x))])
    torch.testing.assert_close(mean_t.pool(tok, mask), ref)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(6)
    tower = HFTower(_cfg()).train()
    x, mask = _batch()
    tower(x, mask).sum().backward()
    g1 = tower.mlm.bert.encoder.layer[0].attention.self.query.weight.grad.clone()
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    tower(x, mask).sum().backward()
    torch.testing.assert_close(tower.mlm.bert.encoder.layer[0].attention.self.query.weight.grad, g1)


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        HFTower(_cfg(model_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="pool"):
        HFTower(_cfg(pool="max"))


def test_checkpoint_from_model_dir_is_self_contained(tmp_path):
    """A model whose text tower came from a local transformers dir loads after that dir is deleted."""
    import shutil

    import medfm

    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=50, **SMALL)).save_pretrained(tmp_path / "bert")
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}},
                                "towers": {"toy": {"type": "hf", **_cfg(model_dir=str(tmp_path / "bert"), hf_config={})}}})
    model.eval().save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "bert")
    loaded = medfm.load_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config["towers"]["toy"]["model_dir"] is None
    x, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode("toy", x, mask), model.encode("toy", x, mask))
