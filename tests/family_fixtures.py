"""Reference models of the published families at random init, saved in each family's published layout.

Used by the fidelity tests: the reference package builds the model (open_clip, transformers,
torchxrayvision, MONAI), the files are written the way the family publishes them, and medfm imports
the folder. Architectures are the tiny members of each published layout.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

RETINA = Path(__import__("skimage").__file__).parent / "data" / "retina.jpg"  # a real fundus photograph
CAMERA = Path(__import__("skimage").__file__).parent / "data" / "camera.png"  # a real 8-bit grey photograph
WORDS = ["pneumonia", "normal", "chest", "x", "ray", "photo", "of", "a", "this", "is", "retina", "fundus",
         "diabetic", "retinopathy", "effusion", "no", "finding", "."]
PROMPTS = ["this is a photo of normal retina", "this is a photo of diabetic retinopathy",
           "this is a photo of pneumonia"]


def bert_tokenizer(folder: Path):
    """A WordPiece BERT tokenizer written into ``folder`` (vocab.txt + tokenizer_config.json)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    return tok, len(vocab)


def biomedclip_folder(root: Path) -> Path:
    """A BiomedCLIP-layout folder (open_clip_config.json + open_clip_model.safetensors + tokenizer), tiny."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import BertConfig

    folder = root / "biomedclip"
    _, n_vocab = bert_tokenizer(folder)
    bert_dir = root / "bert-config"
    BertConfig(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(str(bert_dir))
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                 "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir),
                              "hf_model_pretrained": False, "hf_proj_type": "mlp",
                              "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}}
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                      "std": [0.26862954, 0.26130258, 0.27577711]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def hf_two_tower_folder(root: Path, kind: str) -> Path:
    """A transformers CLIPModel or SiglipModel folder (config, safetensors, tokenizer, preprocessor_config)."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor,
                              SiglipModel)

    folder = root / kind
    _, n_vocab = bert_tokenizer(folder)
    common_t = dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, pad_token_id=0)
    common_v = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=64, patch_size=16)
    torch.manual_seed(0)
    if kind == "clip":
        cfg = CLIPConfig(text_config={**common_t, "max_position_embeddings": 40, "eos_token_id": 3},
                         vision_config=common_v, projection_dim=16)
        model = CLIPModel(cfg)
        proc = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    else:
        cfg = SiglipConfig(text_config={**common_t, "max_position_embeddings": 24}, vision_config=common_v)
        model = SiglipModel(cfg)
        proc = SiglipImageProcessor(size={"height": 64, "width": 64})
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def threads_one() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
