"""Captioning with a small captioner on the frozen backbone, scored by K-Precision (SPARC paper, Sec. 5).

Fit: a Perceiver resampler + transformer decoder (sparc_eval.tasks.captioner) is trained with teacher
forcing on every caption of the card's `fit_dataset` (the backbone stays frozen: only its dense patch
embeddings, head from the card, are read). The fitted captioner is cached as safetensors under the run's
cache folder, keyed by checkpoint, card and seed, and reused on rerun.

Evaluate: greedy decoding on the evaluation split; predictions are written in COCO results format
(`<record>.captions.json`) and scored against the image's reference captions:
  kp     K-Precision, all normalised tokens (percent)
  kpna   K-Precision over nouns and adjectives (percent); null when no part-of-speech tagger is installed
  cider  CIDEr-D x 100 (pycocoevalcap); null when pycocoevalcap is not installed
Metrics are means of the per-sample values. CIDEr's document frequencies come from the whole evaluated
set, so a resampled subset (the regression bootstrap) reuses the full set's per-image values.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sparc_eval.errors import SparcEvalError
from sparc_eval.fileio import write_json_atomic
from sparc_eval.progress import make_progress, track
from sparc_eval.tasks.caption_scores import mean_scores, score_captions, scoring_info
from sparc_eval.tasks.captioner import (
    PAD,
    Captioner,
    CaptionerConfig,
    Vocabulary,
    cosine_lr,
    load_captioner,
    pad_targets,
    save_captioner,
)
from sparc_eval.tasks.runner import Runner, TaskOutput

# ------------------------------------------------------------------------------ runner


@dataclass
class CaptioningParams:
    head: Literal["global", "local"] = "global"  # which dense path of the backbone the captioner reads
    max_over_captions: bool = False
    # Captioner (sparc_eval.tasks.captioner.CaptionerConfig)
    width: int = 256
    heads: int = 4
    latents: int = 16
    resampler_layers: int = 2
    decoder_layers: int = 3
    max_length: int = 24
    dropout: float = 0.1
    min_word_count: int = 2  # rarer training words map to <unk>, which is never generated
    # Fitting: AdamW, linear warm-up then cosine decay; each step takes every caption of `batch_size` images.
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05


def _collate(items: list[dict]) -> tuple[torch.Tensor, list[Any], list[list[str]]]:
    return torch.stack([it["image"] for it in items]), [it["image_id"] for it in items], [it["captions"] for it in items]


class CaptioningRunner(Runner):
    """Fits a captioner on the frozen backbone, decodes greedily, reports K-P / K-Pna / CIDEr."""

    family = "captioning"

    Params = CaptioningParams
    metrics = {"kp": True, "kpna": True, "cider": True}
    has_fit_stage = True

    def _patches(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.ctx.autocast():
            patches, _ = model.encode_image_dense(self.ctx.to_device(images), head=self.params.head)
        return patches.float()

    def _cache_file(self) -> Path:
        return self.ctx.cache_dir / f"captioner-seed{self.ctx.seed}.safetensors"

    @classmethod
    def check(cls, card, params: CaptioningParams) -> None:
        if card.fit_dataset is None:
            raise SparcEvalError(f"task card {card.path}: runner 'captioning' needs a fit_dataset to train the captioner on")

    def fit(self, model: torch.nn.Module) -> None:
        path = self._cache_file()
        if self.ctx.world.all_true(path.is_file()):
            self.captioner, self.vocab, self.fit_info = load_captioner(path)
            self.fit_info["reused_cache"] = True
            return
        if self.card.fit_dataset is None:
            raise SparcEvalError(f"task card {self.card.path}: runner 'captioning' needs a fit_dataset to train the captioner on")
        p, world = self.params, self.ctx.world
        dataset = self.open(self.card.fit_dataset, transform=model.preprocess)
        captions = [c for caps in dataset.captions for c in caps]
        vocab = Vocabulary.build(captions, p.min_word_count)
        batches = self.ctx.fit_batches(len(dataset), p.batch_size)
        weights = batches.weights()
        probe = self._patches(model, self.ctx.to_device(dataset[0]["image"][None]))
        if self.ctx.features_fit_in_memory(len(dataset), probe[0].numel()):
            # The frozen backbone's patch embeddings of the fit split, encoded once (and cached), not once per epoch.
            features = self.ctx.image_features(
                model, dataset, lambda x: model.encode_image_dense(x, head=p.head)[0], f"dense-{p.head}", model.preprocess
            )
            steps = ((features[index], [dataset.captions[i] for i in index]) for _ in range(p.epochs) for index in batches)
        else:
            loader = self.ctx.fit_loader(batches, dataset, _collate)
            steps = ((self._patches(model, images), caps) for _ in range(p.epochs) for images, _, caps in loader)
        cfg = CaptionerConfig(
            in_dim=probe.shape[-1],
            vocab_size=len(vocab),
            width=p.width,
            heads=p.heads,
            latents=p.latents,
            resampler_layers=p.resampler_layers,
            decoder_layers=p.decoder_layers,
            max_length=p.max_length,
            dropout=p.dropout,
        )
        torch.manual_seed(self.ctx.seed)
        captioner = Captioner(cfg).to(self.ctx.device).train()
        net = world.data_parallel(captioner)  # DDP under torchrun: each rank takes its slice of every global batch
        optimizer = torch.optim.AdamW(captioner.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        total = p.epochs * len(batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_lr(s, total, max(1, round(p.warmup_fraction * total)))
        )
        start, loss_value = time.perf_counter(), float("nan")
        with make_progress() as progress:
            bar = progress.add_task("fitting captioner", total=total, info="")
            for step_index, (patches, caps) in enumerate(steps):
                weight = weights[step_index % len(weights)]  # 0.0: this rank's placeholder in a batch smaller than the world
                patches = self.ctx.to_device(patches)
                seqs = [(i, vocab.encode(c, p.max_length)) for i, cs in enumerate(caps) for c in cs]
                index = torch.tensor([i for i, _ in seqs], device=self.ctx.device)
                targets = pad_targets([s for _, s in seqs]).to(self.ctx.device)
                normaliser = world.normaliser(weight * int((targets != PAD).sum()), self.ctx.device)
                with self.ctx.autocast():
                    loss = net(patches, index, targets, normaliser) * weight
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(captioner.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                loss_value = float(world.sum(loss.detach().double().cpu().reshape(1))[0])
                progress.update(bar, advance=1, info=f"epoch {step_index // len(batches) + 1}/{p.epochs} loss {loss_value:.3f}")
        self.fit_info = {
            "train_images": len(dataset),
            "train_captions": len(captions),
            "epochs": p.epochs,
            "steps": total,
            "final_loss": round(loss_value, 4),
            "fit_seconds": round(time.perf_counter() - start, 1),
        }
        if self.ctx.is_main:
            save_captioner(path, captioner.eval(), vocab, self.fit_info)
        self.captioner, self.vocab = captioner.eval(), vocab
        self.fit_info["reused_cache"] = False

    def evaluate(self, model: torch.nn.Module) -> TaskOutput:
        dataset = self.ctx.shard(self.open(self.card.dataset, transform=model.preprocess))  # this rank's slice
        loader = self.ctx.loader(dataset, _collate)
        self.captioner.to(self.ctx.device).eval()
        ids: list[Any] = []
        predictions: list[str] = []
        references: list[list[str]] = []
        for images, image_ids, caps in track(loader, "captioning", total=len(loader)):
            patches = self._patches(model, images)
            with self.ctx.autocast():
                generated = self.captioner.generate(patches)
            ids += image_ids
            predictions += [self.vocab.decode(g) for g in generated]
            references += caps
        ids, predictions, references = self.ctx.gather(ids), self.ctx.gather(predictions), self.ctx.gather(references)
        rows = score_captions(predictions, references, max_over_captions=self.params.max_over_captions)
        samples = [{"image_id": i, "prediction": pred, **row} for i, pred, row in zip(ids, predictions, rows)]
        captions_file = self.ctx.artifact("captions.json")
        if self.ctx.is_main:
            write_json_atomic(captions_file, [{"image_id": i, "caption": pred} for i, pred in zip(ids, predictions)])
        dense = model.describe().get("dense_heads", {}).get(self.params.head, "not described by the model")
        info = {
            "head": self.params.head,
            "dense_path": dense,
            "captioner": {**asdict(self.captioner.cfg), "n_params": sum(t.numel() for t in self.captioner.parameters())},
            "vocabulary": f"{len(self.vocab)} entries: 4 special tokens + the training words seen at least {self.params.min_word_count} times",
            "decoding": f"greedy, at most {self.captioner.cfg.max_length} words",
            "fit": {**self.fit_info, "cache_file": str(self._cache_file())},
            **scoring_info(self.params.max_over_captions),
        }
        return TaskOutput(
            metrics=mean_scores(samples),
            samples=samples,
            n_samples=len(samples),
            info=info,
            artifacts={"captions": captions_file.name},
        )

    @classmethod
    def aggregate(cls, samples: list[dict[str, Any]], params: Any) -> dict[str, float | None]:
        return mean_scores(samples)
