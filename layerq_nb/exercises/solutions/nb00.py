"""Worked solutions for notebook 00 (left out of the student edition)."""
SOLUTIONS = {
"00.1": '''
found = lq.layers(model)
n_layers = len(found)
params_per_layer = found[0].n_params      # or: sum(m.weight.numel() for m in found[0].linears.values())
''',
"00.2": '''
def next_token_nll(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]        # position t predicts the token at t + 1
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), labels.reshape(-1),
                                             ignore_index=-100)     # mean over the targets that count
''',
"00.3": '''
def to_simplex(gains):
    gains = np.asarray(gains, dtype=float)
    if not np.all(np.isfinite(gains)):
        raise ValueError(f"gains must be finite, got {gains}")
    if np.any(gains < 0):
        raise ValueError(f"gains must be >= 0, got {gains}")
    total = gains.sum()
    if total <= 0:
        raise ValueError("every gain is zero: there is nothing to normalise")
    return gains / total
''',
}
