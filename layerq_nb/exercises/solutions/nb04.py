"""Worked solutions for notebook 04 (left out of the student edition)."""
SOLUTIONS = {
"04.1": '''
def allocation_at(nu, q, c, beta, lower, upper):
    return np.clip(q / (nu * c) - beta, lower, upper)
''',
}
