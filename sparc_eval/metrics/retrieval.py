"""Image-text retrieval ranks and recall@k, with the similarity matrix computed block by block.

Protocol (CLIP / ALBEF / CLIP_benchmark): image->text, an image is found at k if ANY of its captions is
among the k captions scoring highest against it; text->image, a caption is found at k if its one image is
among the k images scoring highest against it. Recall@k is the share of queries found.

Ranks are 1-based: 1 + the number of NEGATIVE candidates scoring >= the query's best positive. Ties
count against the model (a negative tied with the positive ranks above it); other positives never push
the best one down. Memory is bounded by `chunk` x `chunk`, not images x captions: the positive scores are
taken first, then each block of the similarity matrix is compared with them and discarded.

Scores are dot products taken in float64 and rounded to float32, so that mathematically equal scores
(duplicate captions, identical images) compare equal whatever the block layout; float32 is already finer
than the precision of the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def retrieval_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image: torch.Tensor,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks for image->text (per image, of its best caption) and text->image (per caption, of its image).

    image_emb [I, D], text_emb [T, D] (compared by dot product, so pass L2-normalised embeddings for
    cosine similarity), text_image [T]: the index of each caption's image. Every image needs a caption.
    Returns (image_ranks [I], text_ranks [T]), both long, 1-based, computed on the embeddings' device.
    """
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if text_emb.shape[1:] != image_emb.shape[1:] or text_image.shape != (n_txt,):
        raise ValueError(
            f"shape mismatch: images {tuple(image_emb.shape)}, texts {tuple(text_emb.shape)}, text_image {tuple(text_image.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    device = image_emb.device
    text_image = text_image.to(device=device, dtype=torch.long)
    if n_txt and (int(text_image.min()) < 0 or int(text_image.max()) >= n_img):
        raise ValueError(f"text_image holds image indices outside [0, {n_img})")

    # Score of each caption against its own image, and each image's best caption score.
    text_pos = torch.empty(n_txt, device=device)
    for t0 in range(0, n_txt, chunk):
        t1 = min(t0 + chunk, n_txt)
        own = image_emb[text_image[t0:t1]]
        text_pos[t0:t1] = (text_emb[t0:t1].double() * own.double()).sum(-1).float()
    # Every image and caption enters some positive score, and NaN / inf in an embedding makes that score
    # non-finite: checking these scores checks the inputs without an images x D temporary.
    if not torch.isfinite(text_pos).all():
        raise ValueError("embeddings must be finite (no NaN or inf)")
    image_pos = torch.full((n_img,), float("-inf"), device=device)
    image_pos.scatter_reduce_(0, text_image, text_pos, reduce="amax")
    if n_img and torch.isneginf(image_pos).any():
        missing = int(torch.isneginf(image_pos).nonzero()[0, 0])
        raise ValueError(f"image {missing} has no caption")

    image_ranks = torch.ones(n_img, dtype=torch.long, device=device)
    text_ranks = torch.ones(n_txt, dtype=torch.long, device=device)
    # One set of block buffers serves every block: nothing block-sized is allocated in the loop, so peak
    # memory does not drift with the number of blocks (allocator fragmentation).
    rows_max, cols_max = min(chunk, n_img), min(chunk, n_txt)
    img64 = torch.empty(rows_max, image_emb.shape[1], dtype=torch.float64, device=device)
    txt64 = torch.empty(cols_max, text_emb.shape[1], dtype=torch.float64, device=device)
    buf64 = torch.empty(rows_max * cols_max, dtype=torch.float64, device=device)
    buf32 = torch.empty(rows_max * cols_max, device=device)
    buf_ge = torch.empty(rows_max * cols_max, dtype=torch.bool, device=device)
    for i0 in range(0, n_img, chunk):
        i1 = min(i0 + chunk, n_img)
        images = img64[: i1 - i0].copy_(image_emb[i0:i1])
        for t0 in range(0, n_txt, chunk):
            t1 = min(t0 + chunk, n_txt)
            m, n = i1 - i0, t1 - t0
            texts = txt64[:n].copy_(text_emb[t0:t1])
            sim64 = torch.mm(images, texts.T, out=buf64[: m * n].view(m, n))
            sim = buf32[: m * n].view(m, n).copy_(sim64)
            # Positive pairs drop out of both counts: only negatives can rank above a positive.
            row = text_image[t0:t1] - i0
            cols = ((row >= 0) & (row < m)).nonzero().squeeze(1)
            sim[row[cols], cols] = float("-inf")
            # int32 sums are over twice as fast as the default int64 ones on CPU; a block holds < 2^31 entries.
            ge = buf_ge[: m * n].view(m, n)
            image_ranks[i0:i1] += torch.ge(sim, image_pos[i0:i1, None], out=ge).sum(dim=1, dtype=torch.int32)
            text_ranks[t0:t1] += torch.ge(sim, text_pos[None, t0:t1], out=ge).sum(dim=0, dtype=torch.int32)
    return image_ranks, text_ranks


def recall_at_k(ranks: Sequence[int] | torch.Tensor, k: int) -> float | None:
    """Share of queries whose (1-based) rank is at most k; None for no queries."""
    ranks = torch.as_tensor(ranks)
    return float((ranks <= k).double().mean()) if ranks.numel() else None
