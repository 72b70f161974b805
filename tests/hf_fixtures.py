"""Tiny random-init model folders in the layouts people download, made offline.

Reusable by any test (the loader contract tests too); each writes into `folder` and returns it:
- `save_tiny_clip(folder)` / `save_tiny_siglip(folder)`: what transformers' `save_pretrained` writes (config.json,
  model.safetensors, a tokenizer, preprocessor_config.json), read by `hf:FOLDER`.
- `save_tiny_openclip(folder)`: open_clip's local-dir / hf-hub layout (open_clip_config.json,
  open_clip_model.safetensors), read by `openclip:local-dir:FOLDER`.

Tokenizers, built without a network:
- CLIP: a `CLIPTokenizer` from open_clip's own BPE vocabulary and merges (the wheel ships them), with the
  start/end markers renamed to Hugging Face's spelling; it gives the same ids as open_clip's tokenizer.
- SigLIP: a `SiglipTokenizer` (the class google/siglip-* folders use, returning input_ids only as theirs do)
  over a tiny sentencepiece model trained here on SynthScenes-like words (at most `SIGLIP_VOCAB` pieces,
  T5 ids: pad 0, eos 1, unk 2). It needs the `sentencepiece` and `protobuf` packages (the `hf` extra).
"""

from __future__ import annotations

import functools
from pathlib import Path

IMAGE_SIZE = 32
PATCH = 8
SIGLIP_VOCAB = 160
_SIGLIP_CORPUS = (
    "a photo of a {}. a picture of a {}. a rendering of a {}. an image containing a {}. a {} on a textured background. "
    "a large small tiny huge object to the left right of top bottom corner in the middle plus and with scene reading from "
    "three two one objects the biggest alongside at is"
)
_COLOURS = "red green blue yellow purple cyan white grey orange pink black brown".split()
_SHAPES = "circle square triangle star diamond cross".split()


def _corpus_lines() -> list[str]:
    lines = [_SIGLIP_CORPUS]
    for colour in _COLOURS:
        for shape in _SHAPES:
            lines.append(f"a small {colour} {shape} left of a large {colour} {shape} in the top right corner")
    return lines


@functools.lru_cache(maxsize=1)
def _clip_vocab_files(folder: str) -> tuple[str, str]:
    """vocab.json and merges.txt of open_clip's BPE, written once per process into `folder`."""
    import json

    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): idx for token, idx in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return str(out / "vocab.json"), str(out / "merges.txt")


def clip_tokenizer(work: Path):
    from transformers import CLIPTokenizer

    vocab, _ = _clip_vocab_files(str(work / "clip-bpe"))
    # from_pretrained on a folder of vocab.json + merges.txt: the one constructor transformers 4 and 5 share.
    return CLIPTokenizer.from_pretrained(Path(vocab).parent, model_max_length=16)


def siglip_tokenizer(work: Path):
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    prefix = work / "siglip-spm"
    if not prefix.with_suffix(".model").is_file():
        work.mkdir(parents=True, exist_ok=True)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus_lines()),
            model_prefix=str(prefix),
            vocab_size=SIGLIP_VOCAB,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            eos_piece="</s>",
            pad_piece="<pad>",
            hard_vocab_limit=False,
            minloglevel=2,
        )
    # As transformers' SigLIP conversion builds it: input_ids only, no attention mask (big_vision trained without one).
    return SiglipTokenizer(vocab_file=str(prefix.with_suffix(".model")), model_max_length=16, model_input_names=["input_ids"])


def save_tiny_clip(folder: Path, *, seed: int = 0) -> Path:
    """A random-init `CLIPModel` (32x32 images, 8-pixel patches, 16-token context) saved with its tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    clip_tokenizer(folder.parent / ".hf-fixture-work").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        folder
    )
    return folder


def save_tiny_siglip(folder: Path, *, seed: int = 0) -> Path:
    """A random-init `SiglipModel` (32x32 images, 8-pixel patches, 16-token context) saved with its tokenizer and image processor."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = Path(folder)
    tokenizer = siglip_tokenizer(folder.parent / ".hf-fixture-work")
    config = SiglipConfig(
        text_config={
            # Text width = image width: transformers 4.x's SigLIP text head maps the width to itself (no projection_size).
            "vocab_size": len(tokenizer),
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP's init sets both to zero; real checkpoints have scale ~ln(117) and bias ~ -13
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


OPENCLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 64, "patch_size": PATCH, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Not open_clip's defaults, so that a loader ignoring the folder's preprocess_cfg gives other pixels.
OPENCLIP_PREPROCESS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "resize_mode": "squash"}


def save_tiny_openclip(folder: Path, *, seed: int = 0) -> Path:
    """A random-init open_clip CLIP in open_clip's local-dir / hf-hub layout: open_clip_config.json (written by
    open_clip's own `save_config_for_hf`) and open_clip_model.safetensors."""
    import torch
    from open_clip.model import CLIP
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = CLIP(**OPENCLIP_CFG)
    model.visual.image_mean, model.visual.image_std = OPENCLIP_PREPROCESS["mean"], OPENCLIP_PREPROCESS["std"]
    model.visual.preprocess_cfg = dict(OPENCLIP_PREPROCESS)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=OPENCLIP_CFG)
    return folder
