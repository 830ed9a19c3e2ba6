"""Worked solutions for notebook 02 (left out of the student edition)."""
SOLUTIONS = {
"02.1": '''
def zeta2_dense(g, H, lam):
    x = np.linalg.solve(H + lam * np.eye(len(g)), g)     # (H + lam I) x = g: no explicit inverse
    return float(g @ x)
''',
"02.2": '''
def decrease(zeta2, t):
    # m(t Delta) = t g'Delta + t^2/2 Delta'H Delta = -t zeta^2 + t^2 zeta^2 / 2, and the decrease is -m
    return (t - t ** 2 / 2) * zeta2
''',
"02.3": '''
def kfac_factors(a, b, n_targets):
    A = a.T @ a / a.shape[0]        # inputs: every one of the T positions has one
    G = b.T @ b / n_targets         # output gradients: only the N positions with a target
    return A, G
''',
"02.4": '''
def kfac_solve(A, G, grad, damping):
    alpha, Q_A = np.linalg.eigh(A)
    gamma, Q_G = np.linalg.eigh(G)
    alpha, gamma = np.clip(alpha, 0, None), np.clip(gamma, 0, None)   # PSD: round-off below 0 goes
    eig = np.outer(gamma, alpha)                  # eigenvalues of A (x) G, laid out like grad (d_out, d_in)
    lam = damping * eig.mean()                    # relative damping: damping x mean eigenvalue
    rotated = Q_G.T @ grad @ Q_A                  # the gradient in the eigenbasis Q_A (x) Q_G
    step = Q_G @ (rotated / (eig + lam)) @ Q_A.T  # divide by the damped eigenvalues, rotate back
    return step, float((grad * step).sum())
''',
}
