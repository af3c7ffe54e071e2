"""`redjax generate`: sample completions of a few prompts from a model folder and print them."""

from __future__ import annotations

import argparse

import numpy as np

from redjax import tokenizer as tokenization
from redjax.sampler import Rollouts, SamplingParams, sample
from redjax.shapes import left_pad


def encode(tok, texts: list[str], *, special: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, P] and mask of the texts, left-padded (as the sampler wants)."""
    seqs = [tok(t, add_special_tokens=special)["input_ids"] for t in texts]
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompt {i + 1} is empty after tokenization")
    return left_pad(seqs, max(len(s) for s in seqs), 0)


def report(prompts: list[str], out: Rollouts, num_samples: int) -> str:
    """The completions as text, with a header per prompt and sample."""
    lines = []
    for b, prompt in enumerate(prompts):
        for g in range(num_samples):
            r = b * num_samples + g
            head = f"prompt {b + 1}/{len(prompts)}, sample {g + 1}/{num_samples}"
            tail = f"{out.lengths[r]} tokens, {out.finish[r]}"
            lines.append(f"=== {head} ({tail}) ===")
            if g == 0:
                lines.append(f"[prompt] {prompt}")
            lines.append(out.text[r])
            lines.append("")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    from redjax.runs import load_model

    # A Hugging Face folder or hub id, or a run folder: then prompts are formatted as in its
    # training.
    model, tok, settings = load_model(args.model, args.dtype)
    chat = not args.raw and settings["chat"] and tokenization.has_chat_template(tok)
    fmt = dict(suffix=settings["prompt_suffix"], system=settings["system"], chat=chat)
    texts = [tokenization.format_prompt(tok, p, **fmt) for p in args.prompt]
    # A chat template writes its own special tokens (BOS included); raw text gets the defaults.
    ids, mask = encode(tok, texts, special=not chat)
    sp = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        eos_ids=tuple(tokenization.eos_ids(tok, model.cfg)),
    )
    out = sample(
        model.params, model.cfg, ids, mask,
        num_samples=args.num_samples, sp=sp, seed=args.seed, tokenizer=tok,
    )  # fmt: skip
    print(report(args.prompt, out, args.num_samples))
