"""Worked solutions for notebook 04 (left out of the student edition). Each runs in the notebook's own
namespace: it uses only the names the notebook has defined by then (np, cp)."""
SOLUTIONS = {
"04.1": '''
def allocation_at(nu, q, c, beta, lower, upper):
    return np.clip(q / (nu * c) - beta, lower, upper)
''',
"04.2": '''
def bisect_nu(spend, budget):
    lo = hi = 1.0
    while spend(lo) < budget:          # spend falls as nu rises: a small price spends a lot
        lo /= 2
    while spend(hi) > budget:
        hi *= 2
    while hi / lo - 1 > 1e-13:
        mid = np.sqrt(lo * hi)         # bisection in log nu
        if spend(mid) > budget:
            lo = mid                   # too much spent: the price is too low
        else:
            hi = mid
    return np.sqrt(lo * hi)
''',
"04.3": '''
def program_a_cvxpy(q, budget, cost, beta, lower, upper):
    r = cp.Variable(len(q))
    objective = cp.Maximize(q @ cp.log1p(r / beta))       # concave: q >= 0 times concave atoms
    finite = np.isfinite(upper)
    constraints = [cost @ r == budget, r >= lower, r[finite] <= upper[finite]]
    cp.Problem(objective, constraints).solve(solver=cp.CLARABEL)
    return r.value
''',
}
