"""Train the mini-omni projectors (towers and decoder frozen): mqcompile/models/mini_omni_projectors.safetensors.

    python tools/train_mini_omni.py            # the committed weights: --seed 0 and the default step counts

Deterministic under a seed: data (scenes, sentences, their order), initialization and batches all come from it; with
``OMP_NUM_THREADS=1`` a rerun is bit-identical (with more threads float reductions may differ in the last bits, as
``docs/method.md`` measured for the suite). Stages, all on CPU:

1. features: frozen tower outputs of the training data, computed once: DINOv2 patch tokens 2x2-merged of rendered
   scenes, pooled Whisper encoder states of espeak-ng training sentences (``mqcompile.evaluation.omni_data``).
2. audio alignment (no decoder): the audio projector's outputs are scored against the decoder's own (frozen) input
   embeddings of the transcript tokens by cosine similarity and trained with CTC, so each audio token moves towards
   the embedding of the word it hears. Cheap: it never runs the 0.5B decoder.
3. end to end: next-token loss of the frozen decoder on the answers (vision: the three questions of a scene packed in
   one row with attention-mask segments; speech: the transcript and ``<|endoftext|>``), gradients into the projectors.
   The committed weights run it for vision only (``--audio-steps 0``): measured on the 2-core CPU, a speech step
   (4 sentences) takes 15-16 s and 20 steps moved the transcript loss only from 4.82 to 4.19, so the 150 steps that
   might matter (~40 min) did not fit the 60-minute budget after stages 1-2 (docs/omni.md, "Training").

Writes the fp16 weights and prints their sha256 (put it into ``mini_omni.PROJECTOR_SHA256``).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time

import torch
import torch.nn.functional as F

from mqcompile.assets import cache_dir
from mqcompile.evaluation import omni_data
from mqcompile.models.mini_omni import (
    PROJECTOR_FILE,
    MiniOmni,
    audio_features,
    build_mini_omni,
    image_pixels,
    save_projectors,
)
from mqcompile.models.qwen2_text import decoder_states

log = logging.getLogger("train_mini_omni")

TRAIN_SCENE_SEED = 1  # evaluation and calibration use other seeds (mqcompile/evaluation/omni.py)


def vision_features(model: MiniOmni, count: int) -> tuple[torch.Tensor, list[dict[str, str]]]:
    images, facts = omni_data.scenes(count, TRAIN_SCENE_SEED, model.spec.image_size)
    path = cache_dir("train", "mini_omni") / f"vision-{count}.pt"
    if path.is_file():
        return torch.load(path), facts
    out = []
    with torch.no_grad():
        for start in range(0, count, 32):
            out.append(model.merged_patches(image_pixels(model.spec, images[start : start + 32])).half())
    feats = torch.cat(out)
    torch.save(feats, path)
    return feats, facts


def audio_data(model: MiniOmni, tokenizer, count: int):
    """Pooled encoder states (n, audio_frames // 4, d), valid token counts, transcripts and their token ids."""
    limit = model.spec.audio_seconds - 0.3
    sentences = omni_data.training_sentences(count * 2)
    waves = omni_data.spoken(sentences)
    keep = [i for i, w in enumerate(waves) if len(w) / 16000 <= limit][:count]
    sentences, waves = [sentences[i] for i in keep], [waves[i] for i in keep]
    path = cache_dir("train", "mini_omni") / f"audio-{len(sentences)}.pt"
    if path.is_file():
        states, valid = torch.load(path)
    else:
        chunks, valid = [], []
        with torch.no_grad():
            for start in range(0, len(waves), 8):
                feats, mask = audio_features(model.spec, waves[start : start + 8])
                chunks.append(model.audio_states(feats).half())
                valid.append(mask.sum(-1) // model.spec.frames_per_token)
                log.info("audio features %d/%d", start + len(feats), len(waves))
        states, valid = torch.cat(chunks), torch.cat(valid)
        torch.save((states, valid), path)
    targets = [tokenizer(" " + s).input_ids for s in sentences]
    return states, valid, sentences, targets


def ctc_stage(model: MiniOmni, states, valid, targets, steps: int, batch: int, seed: int) -> None:
    """Audio alignment: CTC of cosine(audio token, decoder input embedding) over the training transcripts' tokens."""
    table = model.lm.model.embed_tokens.weight.detach()
    vocab = sorted({t for ids in targets for t in ids})
    index = {t: i + 1 for i, t in enumerate(vocab)}  # 0 = blank
    emb = F.normalize(table[vocab], dim=-1)
    blank = torch.nn.Parameter(torch.randn(1, table.shape[1]) * 0.02)
    scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
    target_norm = table[vocab].norm(dim=-1).mean()
    params = [*model.audio_projector.parameters(), blank, scale]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(steps):
        lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        rows = rng.sample(range(len(targets)), batch)
        z = model.audio_projector(states[rows].float())  # (b, T, width)
        cos = F.normalize(z, dim=-1) @ torch.cat([F.normalize(blank, dim=-1), emb]).T
        logp = (cos * scale.exp()).log_softmax(-1).transpose(0, 1)  # (T, b, V + 1)
        tgt = [torch.tensor([index[t] for t in targets[r]]) for r in rows]
        loss = F.ctc_loss(
            logp, torch.cat(tgt), valid[rows], torch.tensor([len(t) for t in tgt]), blank=0, zero_infinity=True
        )
        norm_loss = ((z.norm(dim=-1) / target_norm - 1) ** 2).mean()
        opt.zero_grad()
        (loss + 0.1 * norm_loss).backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.info(
                "ctc step %d/%d loss %.3f norm %.3f (%.0f s)", step, steps, loss, norm_loss, time.perf_counter() - start
            )


def _row_loss(model: MiniOmni, rows: list[tuple[list[torch.Tensor], list[int], list[int], list[int]]]) -> torch.Tensor:
    """Mean next-token loss over the scored positions of packed rows.

    Each row: (input embeddings, token ids of the row, attention-mask segments, positions scored: position ``p``
    predicts token ``p + 1``)."""
    width = max(len(r[1]) for r in rows)
    embeds, masks, picks, labels = [], [], [], []
    for b, (row, ids, segments, scored) in enumerate(rows):
        pad = width - row.shape[0]
        embeds.append(F.pad(row, (0, 0, 0, pad)))
        masks.append(torch.tensor(segments + [0] * pad))
        picks += [(b, p) for p in scored]
        labels += [ids[p + 1] for p in scored]
    hidden = decoder_states(model.lm, torch.stack(embeds), torch.stack(masks))
    b_idx = torch.tensor([p[0] for p in picks])
    p_idx = torch.tensor([p[1] for p in picks])
    logits = model.lm.lm_head(hidden[b_idx, p_idx])
    return F.cross_entropy(logits, torch.tensor(labels))


def _embed(model: MiniOmni, ids: list[int], placeholder: int, features: torch.Tensor) -> torch.Tensor:
    """Decoder input embeddings of ``ids`` with the placeholder positions taken by ``features`` (in order)."""
    table = model.lm.model.embed_tokens.weight
    ids_t = torch.tensor(ids)
    slots = (ids_t == placeholder).nonzero()[:, 0]
    return table[ids_t].index_put((slots,), features)


def vision_row(model: MiniOmni, tokenizer, feats: torch.Tensor, facts: dict[str, str]):
    """One scene with its three questions as branches of one row (each sees the image and itself)."""
    ids, segments, scored = omni_data.scene_row(tokenizer, model.spec, facts)
    image = model.vision_projector(feats.float()[None])[0]
    return _embed(model, ids, model.spec.image_token_id, image), ids, segments, scored


def audio_row(model: MiniOmni, tokenizer, states: torch.Tensor, n_valid: int, target: list[int]):
    ids, start = omni_data.speech_row(tokenizer, model.spec, n_valid, target)
    audio = model.audio_projector(states[:n_valid].float()[None])[0]
    return (
        _embed(model, ids, model.spec.audio_token_id, audio),
        ids,
        [1] * len(ids),
        list(range(start - 1, len(ids) - 1)),
    )


def end_to_end(model, tokenizer, make_row, count: int, params, steps: int, batch: int, lr: float, seed: int, name: str):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = [make_row(i) for i in rng.sample(range(count), batch)]
        loss = _row_loss(model, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.3f (%.0f s)", name, step, steps, float(loss), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--ctc-steps", type=int, default=600)
    parser.add_argument("--vision-steps", type=int, default=60)
    parser.add_argument("--audio-steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=str(PROJECTOR_FILE))
    parser.add_argument("--stop-after", choices=("features", "ctc", "vision", "audio"), default="audio")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = build_mini_omni(projectors=None)
    from transformers import AutoTokenizer

    from mqcompile.evaluation.checkpoints.qwen2_text import CACHE_NAME

    tokenizer = AutoTokenizer.from_pretrained(cache_dir("models") / CACHE_NAME)
    torch.manual_seed(args.seed)
    for module in (model.vision_projector, model.audio_projector):
        for layer in module:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
                torch.nn.init.zeros_(layer.bias)
        module.requires_grad_(True)
    vfeats, vfacts = vision_features(model, args.scenes)
    states, valid, _sentences, targets = audio_data(model, tokenizer, args.sentences)
    log.info("features ready: %d scenes, %d sentences (%.0f s)", len(vfacts), len(targets), time.perf_counter() - start)
    if args.stop_after == "features":
        return
    ctc_stage(model, states, valid, targets, args.ctc_steps, 16, args.seed)
    save_projectors(model, args.out)  # each stage leaves its weights (a long run can be inspected part way)
    if args.stop_after == "ctc":
        return
    end_to_end(
        model,
        tokenizer,
        lambda i: vision_row(model, tokenizer, vfeats[i], vfacts[i]),
        len(vfacts),
        list(model.vision_projector.parameters()),
        args.vision_steps,
        args.batch,
        1e-3,
        args.seed,
        "vision",
    )
    save_projectors(model, args.out)
    if args.stop_after == "vision":
        return
    end_to_end(
        model,
        tokenizer,
        lambda i: audio_row(model, tokenizer, states[i], int(valid[i]), targets[i]),
        len(targets),
        list(model.audio_projector.parameters()),
        args.audio_steps,
        args.batch,
        5e-4,
        args.seed,
        "audio",
    )
    digest = save_projectors(model, args.out)
    log.info("wrote %s (sha256 %s) in %.1f min", args.out, digest, (time.perf_counter() - start) / 60)
    print(digest)


if __name__ == "__main__":
    main()
