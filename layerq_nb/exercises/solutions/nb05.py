"""Worked solutions for notebook 05 (left out of the student edition)."""
SOLUTIONS = {
"05.1": '''
# s_k = 1 - q_k / (nu n_k): the smallest gain per weight q_k / n_k is pruned most
k = int(np.argmin(q_small / sizes_small))
''',
"05.2": '''
def sparsity_at(nu, q, n, lower, upper):
    return np.clip(1.0 - q / (nu * n), lower, upper)
''',
"05.3": '''
def prune_map(q, S, n, lower, upper):
    q, n = np.asarray(q, dtype=float), np.asarray(n, dtype=float)
    target = S * n.sum()

    def spent(nu):
        return n @ sparsity_at(nu, q, n, lower, upper)

    lo, hi = 0.0, 1.0
    while spent(hi) < target:          # bracket: the spend grows with nu
        hi *= 2.0
    for _ in range(200):               # halve the bracket down to machine precision
        mid = (lo + hi) / 2
        if spent(mid) < target:
            lo = mid
        else:
            hi = mid
    return sparsity_at(hi, q, n, lower, upper)
''',
"05.4": '''
def magnitude(W, s):
    count = int(s * W.numel())                       # floor(s * d_out * d_in), the whole matrix
    mask = torch.zeros(W.numel(), dtype=torch.bool)
    mask[torch.argsort(W.abs().reshape(-1))[:count]] = True
    return mask.reshape(W.shape)
''',
"05.5": '''
def wanda(W, X, s):
    score = W.abs() * X.norm(dim=0)[None, :]         # |W_ij| * ||X_j||_2, shape (d_out, d_in)
    count = int(s * W.shape[1])                      # floor(s * d_in) in every output row
    mask = torch.zeros(W.shape, dtype=torch.bool)
    mask.scatter_(1, torch.argsort(score, dim=1)[:, :count], True)
    return mask
''',
}
