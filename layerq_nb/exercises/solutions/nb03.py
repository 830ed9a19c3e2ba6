"""Worked solutions for notebook 03 (left out of the student edition)."""
SOLUTIONS = {
"03.1": '''
def influence_identity(model, train, validation, k, damping):
    layer = lq.layers(model)[k]

    def grad_of_block(blocks, j):           # gradient of block j's mean loss on layer k's weights
        model.zero_grad()
        batch = next(blocks.subset([j]).batches(1, device=model.device))   # on the model's device
        model(**batch).loss.backward()
        return torch.cat([m.weight.grad.double().flatten() for m in layer.linears.values()])

    g_val = sum(grad_of_block(validation, j) for j in range(len(validation)))
    return np.array([-float(g_val @ grad_of_block(train, i)) / damping for i in range(len(train))])
''',
"03.2": '''
def permutation_shapley(value, n_players, orders):
    phi = np.zeros(n_players)
    for order in orders:
        order = np.asarray(order)
        prefixes = np.zeros((n_players + 1, n_players), bool)   # row i: the first i players of the order
        for i, player in enumerate(order):
            prefixes[i + 1:, player] = True
        phi[order] += np.diff(value(prefixes))                  # v(first i+1) - v(first i) -> player order[i]
    return phi / len(orders)
''',
"03.3": '''
span = cs.chance_loss - cs.full_loss
cornerstone_layers = [int(k) for k in np.flatnonzero(cs.drop >= 0.5 * span)]
''',
}
