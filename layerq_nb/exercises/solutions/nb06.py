"""Worked solutions for notebook 06 (left out of the student edition)."""
SOLUTIONS = {
"06.1": '''
q_s_raw, q_t_raw = np.asarray(q["prose"].values, float), np.asarray(q["arithmetic"].values, float)
delta = float(np.linalg.norm(q_t_raw / q_t_raw.sum() - q_s_raw / q_s_raw.sum()))
''',
"06.2": '''
def realised_regret(q_source, q_target, budget, beta=1.0, upper=np.inf):
    x_S = lq.allocate(q_source, budget, beta=beta, upper=upper).x
    x_T = lq.allocate(q_target, budget, beta=beta, upper=upper).x
    q_t = np.asarray(q_target, float) / np.sum(q_target)
    F_T = lambda x: np.sum(q_t * np.log1p(x / beta))
    return F_T(x_T) - F_T(x_S)
''',
"06.3": '''
def regret_curve(q_target, direction, deltas, budget, beta=1.0, upper=np.inf):
    q_t = np.asarray(q_target, float) / np.sum(q_target)
    u = np.asarray(direction, float) - np.mean(direction)     # stay on the simplex: entries sum to 0
    u = u / np.linalg.norm(u)                                  # unit length: ||q_S - q_T|| = delta
    regrets = np.array([realised_regret(q_t + d * u, q_t, budget, beta=beta, upper=upper) for d in deltas])
    slope = np.polyfit(np.log(deltas), np.log(regrets), 1)[0]
    return regrets, slope
''',
}
