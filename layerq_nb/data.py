"""Tasks as fixed-length token blocks with labels and masks.

Built-in offline tasks, real text shipped with CPython plus one generated task:
  prose       English prose of the Python documentation topics (`pydoc_data.topics`)
  code        Python standard-library source files (`*.py` at the top of the stdlib folder)
  arithmetic  generated "a op b = c" problems; the loss covers the answers only
and `hf:<dataset>[:<config>]`, any Hugging Face dataset through `datasets` when the hub is reachable.

Splits are fixed by content, not by seed: a document goes to train / validation / test by a hash of its
key (80/10/10), so splits are disjoint for every seed. The seed orders the documents and picks the
arithmetic problems. Documents are packed into blocks of `block_size` tokens with no padding; labels are
the input ids (the model shifts them) with -100 where no loss is taken.
"""
from __future__ import annotations

import contextlib
import hashlib
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Blocks", "TASKS", "SPLITS", "load_task", "task_documents", "check_task", "check_batch_size",
           "check_blocks"]

SPLITS = ("train", "validation", "test")
TASKS = ("prose", "code", "arithmetic")
IGNORE = -100             # the label value that PyTorch's cross-entropy skips
ARITHMETIC_POOL = 20_000  # problems drawn per seed before the split filter

Segment = tuple[str, bool]     # (text, whether its tokens are trained on)


def _is_whole(value) -> bool:
    return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))) or \
        (isinstance(value, (float, np.floating)) and np.isfinite(value) and value == int(value))


def check_batch_size(batch_size: object) -> int:
    """batch_size as an int >= 1, or a ValueError that says so (not range()'s "arg 3 must not be zero")."""
    if not _is_whole(batch_size) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (blocks per forward pass), got {batch_size!r}")
    return int(batch_size)


@dataclass(frozen=True, eq=False)
class Blocks:
    """Token blocks of one task split: every later stage consumes these unchanged."""
    input_ids: torch.Tensor       # (N, T) int64
    labels: torch.Tensor          # (N, T) int64, IGNORE where no loss; the model shifts them by one
    attention_mask: torch.Tensor  # (N, T) int64, 1 for real tokens
    task: str
    split: str

    def __post_init__(self):
        # malformed blocks fail here, where they are made, not as a dtype or shape error deep inside torch
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise TypeError(f"Blocks.input_ids must be a 2-d (blocks, tokens) tensor, got {_described(ids)}: "
                            "make blocks with layerq_nb.load_task(task, tokenizer, n_blocks=...)")
        for name in ("labels", "attention_mask"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.shape != ids.shape:
                raise ValueError(f"Blocks.{name} must have the shape of input_ids {tuple(ids.shape)}, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else _described(value)}")
        for name in ("input_ids", "labels"):   # the embedding and the loss index with them
            if getattr(self, name).dtype != torch.long:
                raise TypeError(f"Blocks.{name} must hold int64 token ids, got {getattr(self, name).dtype}: "
                                f"pass {name}.long(), or make blocks with layerq_nb.load_task(...)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    @property
    def n_targets(self) -> int:
        """Number of predicted tokens (non-masked labels after the one-token shift)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> Blocks:
        index = torch.as_tensor(index, dtype=torch.long)   # cpu on purpose: blocks live on the CPU, batches move
        return Blocks(self.input_ids[index], self.labels[index], self.attention_mask[index], self.task, self.split)

    def batches(self, batch_size: int, *, device: str | torch.device | None = None) -> Iterator[dict]:
        """Dicts of (B, T) tensors that `model(**batch)` accepts, moved to `device` when given (the blocks
        stay on the CPU; pass `device=model.device` where the model may live on a GPU)."""
        batch_size = check_batch_size(batch_size)
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            batch = {"input_ids": self.input_ids[sl], "labels": self.labels[sl], "attention_mask": self.attention_mask[sl]}
            yield batch if device is None else {k: v.to(device) for k, v in batch.items()}


def _described(value) -> str:
    shape = getattr(value, "shape", None)
    return type(value).__name__ + (f" of shape {tuple(shape)}" if shape is not None else "")


def check_blocks(model, blocks: object) -> Blocks:
    """`blocks` if `model` can run them, else one clear error before any pass (evaluate.mean_loss and
    tape.run_tape, the loops that run a model over blocks, call it first); without it, blocks from
    another tokenizer or past the context fail deep inside torch, or past the context not at all.
    The ids are scanned once (a min and a max), cheap next to any forward pass."""
    if not isinstance(blocks, Blocks):
        swapped = " (model and blocks swapped?)" if isinstance(blocks, torch.nn.Module) else ""
        raise TypeError(f"blocks must be Blocks, got {_described(blocks)}{swapped}: make them with "
                        "layerq_nb.load_task(task, tokenizer, n_blocks=...)")
    if len(blocks) == 0:
        raise ValueError("no blocks to evaluate: load some with layerq_nb.load_task(..., n_blocks=...)")
    config = getattr(model, "config", None)
    ctx = getattr(config, "max_position_embeddings", None)
    if ctx is not None and blocks.block_size > ctx:
        raise ValueError(f"blocks of {blocks.block_size} tokens exceed the model's context of {ctx}: "
                         f"reload the task with block_size <= {ctx}")
    # the embedding's rows, not config.vocab_size: some checkpoints pad the embedding past the tokenizer
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embed, "num_embeddings", None) or getattr(config, "vocab_size", None)
    targets = blocks.labels.masked_fill(blocks.labels == IGNORE, 0)
    lo, hi = (min(int(blocks.input_ids.min()), int(targets.min())),
              max(int(blocks.input_ids.max()), int(targets.max())))
    if vocab is not None and (lo < 0 or hi >= vocab):
        raise ValueError(f"token ids span [{lo}, {hi}], outside the model's vocabulary [0, {vocab}): the blocks "
                         "were probably tokenised for another model; load them with this model's tokenizer, "
                         "layerq_nb.load_task(task, tokenizer, ...)")
    return blocks


# ----------------------------------------------------------------------------- documents

def _split_of(key: str) -> str:
    bucket = int(hashlib.md5(key.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def _shuffled(keys: list[str], seed: int) -> list[str]:
    return [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]


def _prose(split: str, seed: int) -> Iterator[list[Segment]]:
    # topics differ a lot in length, so split by paragraph to keep the 80/10/10 balance; keyed by the
    # paragraph's text, so a paragraph repeated in several topics lands in one split only
    from pydoc_data.topics import topics
    for k in _shuffled(sorted(topics), seed):
        paragraphs = [p.strip() for p in topics[k].split("\n\n") if p.strip()]
        mine = [p for p in paragraphs if _split_of("prose:" + p) == split]
        if mine:
            yield [("\n\n".join(mine).strip() + "\n", True)]


def _code(split: str, seed: int) -> Iterator[list[Segment]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    keys = [p.name for p in sorted(stdlib.glob("*.py")) if _split_of("code:" + p.name) == split]
    for k in _shuffled(keys, seed):
        yield [((stdlib / k).read_text(encoding="utf-8", errors="replace"), True)]


def _arithmetic(split: str, seed: int) -> Iterator[list[Segment]]:
    rng = np.random.default_rng(seed)
    ops = rng.integers(0, 3, ARITHMETIC_POOL)
    big = rng.integers(0, 1000, (ARITHMETIC_POOL, 2))
    small = rng.integers(0, 100, (ARITHMETIC_POOL, 2))
    for op, (a, b), (c, d) in zip(ops, big, small):
        a, b, sym, ans = (a, b, "+", a + b) if op == 0 else (a, b, "-", a - b) if op == 1 else (c, d, "*", c * d)
        prompt = f"{a} {sym} {b} = "
        if _split_of("arithmetic:" + prompt) == split:
            yield [(prompt, False), (f"{ans}\n", True)]


@contextlib.contextmanager
def _offline_hub():
    """Inside, `datasets` and `huggingface_hub` use only their local caches: no retries on a dead network."""
    import datasets
    import huggingface_hub.constants as hub_constants
    before = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = before


def _hf_dataset(spec: str):
    """The Hugging Face dataset of `hf:<name>[:<config>]`. The hub is probed first (as load_model does):
    when it is unreachable only the local datasets cache is tried, so an offline machine fails at once
    with one clear message instead of retrying for half a minute."""
    from .models import _hub_reachable
    name, _, config = spec.partition(":")
    if not name:
        raise ValueError("hf: needs a dataset name: hf:<name>[:<config>], e.g. hf:wikitext:wikitext-2-raw-v1")
    online = _hub_reachable()
    try:
        import datasets
        with contextlib.nullcontext() if online else _offline_hub():
            data = datasets.load_dataset(name, config or None)
    except ImportError as err:
        raise ImportError("hf: tasks need the datasets package: pip install datasets") from err
    except Exception as err:
        where = "" if online else " The Hugging Face hub is unreachable and the dataset is not in the local cache."
        raise ValueError(f"could not load the Hugging Face dataset {name!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}).{where} Offline? Use a built-in task: "
                         "prose, code or arithmetic") from None
    return data


def _hf(spec: str, split: str, seed: int, data=None) -> Iterator[list[Segment]]:
    name, _, config = spec.partition(":")
    data = _hf_dataset(spec) if data is None else data
    aliases = {"train": ["train"], "validation": ["validation", "valid", "dev"], "test": ["test"]}
    found = next((s for s in aliases[split] if s in data), None)
    if found is not None:
        rows, keep = data[found], None
    else:   # no such split upstream: hash-split the train rows
        rows = data["train"]
        keep = [i for i in range(len(rows)) if _split_of(f"{spec}:{i}") == split]
    column = "text" if "text" in rows.column_names else next(
        (c for c, f in rows.features.items() if getattr(f, "dtype", None) == "string"), None)
    if column is None:
        raise ValueError(f"dataset {name!r} has no text column (columns: {rows.column_names})")
    index = keep if keep is not None else list(range(len(rows)))
    for i in np.random.default_rng(seed).permutation(len(index)):
        text = rows[int(index[i])][column]
        if text and text.strip():
            yield [(text.strip() + "\n", True)]


def check_task(name: str, split: str = "train", load: bool = True) -> str:
    """Check a task name and split before any long work; for `hf:` tasks (load=True) also load the
    dataset now (probing the hub first), so that an offline machine or a typo fails at once."""
    if not isinstance(name, str):
        raise ValueError(f"task must be a string ({', '.join(TASKS)} or hf:<dataset>), got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if name.startswith("hf:"):
        if load:
            _hf_dataset(name[3:])
    elif name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}, or hf:<dataset>[:<config>]")
    return name


def task_documents(name: str, split: str = "train", seed: int = 0) -> Iterator[list[Segment]]:
    """The task's documents for a split, in seeded order: each a list of (text, trained) segments."""
    check_task(name, split, load=False)
    if not _is_whole(seed) or int(seed) < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    seed = int(seed)
    if name.startswith("hf:"):
        return _hf(name[3:], split, seed, _hf_dataset(name[3:]))    # load (or fail) now, not when first iterated
    builders = {"prose": _prose, "code": _code, "arithmetic": _arithmetic}
    return builders[name](split, seed)


# ----------------------------------------------------------------------------- blocks

def _context_length(tokenizer) -> int | None:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if n and n < 10**7 else None


def load_task(name: str, tokenizer: object, *, split: str = "train", n_blocks: int | None = None,
              block_size: int = 256, seed: int = 0) -> Blocks:
    """Tokenise a task split into `n_blocks` blocks of `block_size` tokens (all the split's text if None).

    Documents are packed end to end with an end-of-text token between them; the last partial block is
    dropped. Deterministic for (name, split, n_blocks, block_size, seed), and a smaller n_blocks gives a
    prefix of a larger one.
    """
    if not _is_whole(block_size) or int(block_size) < 2:
        raise ValueError(f"block_size must be at least 2 tokens and a whole number, got {block_size!r}")
    block_size = int(block_size)
    ctx = _context_length(tokenizer)
    if ctx is not None and block_size > ctx:
        raise ValueError(f"block_size {block_size} exceeds the model's context of {ctx} tokens: use block_size <= {ctx}")
    if n_blocks is not None and (not _is_whole(n_blocks) or int(n_blocks) < 1):
        raise ValueError(f"n_blocks must be >= 1 and a whole number (or None for all), got {n_blocks!r}")
    n_blocks = None if n_blocks is None else int(n_blocks)
    if getattr(tokenizer, "eos_token_id", "missing") == "missing" or not callable(tokenizer):
        raise ValueError(f"tokenizer must be the tokenizer load_model returned, got {type(tokenizer).__name__}")
    docs = task_documents(name, split, seed)
    eos = tokenizer.eos_token_id
    sep_after_doc = name != "arithmetic"     # problems are separated by their newline
    need = None if n_blocks is None else n_blocks * block_size
    ids: list[int] = []
    trained: list[bool] = []
    pending: list[list[Segment]] = []

    def flush():
        flat = [seg for doc in pending for seg in doc]
        if not flat:
            return
        encoded = tokenizer([t for t, _ in flat], add_special_tokens=False, verbose=False)["input_ids"]
        seg_iter = iter(zip(encoded, flat))
        for doc in pending:
            for _ in doc:
                toks, (_, is_trained) = next(seg_iter)
                ids.extend(toks)
                trained.extend([is_trained] * len(toks))
            if sep_after_doc and eos is not None:
                ids.append(eos)
                trained.append(True)
        pending.clear()

    for doc in docs:
        pending.append(doc)
        if len(pending) >= 256 or (name != "arithmetic" and len(pending) >= 8):
            flush()
            if need is not None and len(ids) >= need:
                break
    flush()
    available = len(ids) // block_size
    if available == 0:
        raise ValueError(f"block_size {block_size} is larger than all the text of task {name!r} split {split!r} "
                         f"({len(ids)} tokens): use a smaller block_size")
    if n_blocks is not None and n_blocks > available:
        raise ValueError(f"task {name!r} split {split!r} has text for only {available} blocks of {block_size} tokens; "
                         f"ask for n_blocks <= {available} or a smaller block_size")
    n = available if n_blocks is None else n_blocks
    # cpu on purpose: blocks are data on the CPU; each pass moves its batch to the model's device
    input_ids = torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
    mask = torch.tensor(trained[: n * block_size], dtype=torch.bool).view(n, block_size)   # cpu on purpose: as above
    labels = input_ids.masked_fill(~mask, IGNORE)
    return Blocks(input_ids=input_ids, labels=labels, attention_mask=torch.ones_like(input_ids),
                  task=name, split=split)
