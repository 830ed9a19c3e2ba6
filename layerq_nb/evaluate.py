"""Held-out evaluation: mean next-token loss and perplexity over the non-masked targets of token blocks."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .data import IGNORE, Blocks, check_batch_size, check_blocks

__all__ = ["token_nll", "batch_size_for", "mean_loss", "perplexity", "generate"]


def token_nll(logits: torch.Tensor, targets: torch.Tensor, *, log_probs: bool = False,
              reduction: str = "none") -> torch.Tensor:
    """Next-token NLL -log p(y_t | y_<t) of every target, 0 where it is masked (IGNORE): the one place
    layerq_nb computes it (evaluation, fine-tuning, the tape, ablations).

    logits (B, T, V) line up with targets (B, T): pass logits[:, :-1] with labels[:, 1:]. log_probs=True
    when they are log-softmax outputs already (the tape shares one log-softmax between its phases).
    reduction "none" gives (B, T), "sum" the float32 sum over targets. The rows are made contiguous
    (B*T, V): the (B, V, T) layout that `cross_entropy` wants for 3-d input takes its log-softmax along
    a strided axis, several times slower on CPU at V = 49k."""
    if reduction not in ("none", "sum"):
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    b, t, v = logits.shape
    loss = torch.nn.functional.nll_loss if log_probs else torch.nn.functional.cross_entropy
    out = loss(logits.reshape(b * t, v).float(), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction)
    return out.view(b, t) if reduction == "none" else out


def batch_size_for(model: torch.nn.Module, batch_size: int | None = None) -> int:
    """None -> the device's batch size (device.dtype_policy: one block at a time on a CPU, where the
    logits of a 4-block batch and their log-softmax take 0.3 GB for no speed)."""
    if batch_size is None:
        from .device import dtype_policy
        return dtype_policy(next(model.parameters()).device).batch_size
    return batch_size


@torch.inference_mode()
def mean_loss(model: torch.nn.Module, blocks: Blocks, batch_size: int | None = None, *, progress: bool = True) -> float:
    """L = (1/N) sum_t -log p(y_t | y_<t) over the N non-masked targets of all blocks (fp32 sums).
    batch_size None: the device's (`device.dtype_policy`)."""
    check_blocks(model, blocks)
    batch_size = batch_size_for(model, batch_size)
    check_batch_size(batch_size)
    if blocks.n_targets == 0:
        raise ValueError(f"the {blocks.task!r} blocks have no unmasked target tokens: nothing to evaluate")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    bar = tqdm(total=len(blocks), desc=f"eval {blocks.task}", unit="block", disable=not progress, leave=False)
    for batch in blocks.batches(batch_size, device=device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]                    # position t predicts token t+1
        total += float(token_nll(logits[:, :-1], targets, reduction="sum"))
        count += int((targets != IGNORE).sum())
        bar.update(batch["input_ids"].shape[0])
    bar.close()
    return total / count


def perplexity(model: torch.nn.Module, blocks: Blocks, batch_size: int | None = None, *, progress: bool = True) -> float:
    """exp(mean next-token loss) over the non-masked targets of `blocks`."""
    return math.exp(mean_loss(model, blocks, batch_size=batch_size, progress=progress))


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer: object, question: str, *, max_new_tokens: int = 40) -> str:
    """Greedy answer to one user question, through the chat template when the tokenizer has one."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = question
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
