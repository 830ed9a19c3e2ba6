"""Worked solutions for notebook 01 (left out of the student edition)."""
SOLUTIONS = {
"01.1": '''
def weight_grad(module, loss_fn):
    saved = {}

    def keep_a_and_b(mod, inputs, output):
        saved["a"] = inputs[0].detach()                       # the layer input a
        output.register_hook(lambda grad: saved.__setitem__("b", grad.detach()))   # b = dL/ds in backward

    handle = module.register_forward_hook(keep_a_and_b)
    try:
        loss_fn().backward()
    finally:
        handle.remove()
    a = saved["a"].reshape(-1, saved["a"].shape[-1])          # (tokens, d_in)
    b = saved["b"].reshape(-1, saved["b"].shape[-1])          # (tokens, d_out)
    return b.T @ a                                            # sum_t b_t a_t^T, (d_out, d_in)
''',
"01.2": '''
def layer_grad_norms(grads, n_layers):
    out = np.zeros(n_layers)
    for (layer, module), g in grads.items():
        out[layer] += float((g.double() ** 2).sum())
    return out
''',
"01.3": '''
k = int(np.argmax(iso.layer_norm2))
''',
}
