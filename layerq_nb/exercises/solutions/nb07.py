"""Worked solutions for notebook 07 (left out of the student edition)."""
SOLUTIONS = {
"07.1": '''
bf16_bytes = 2 * sum(p.numel() for p in model.parameters())   # 16 bits = 2 bytes per parameter
''',
"07.2": '''
def shard(n_blocks, rank, world_size):
    return list(range(rank, n_blocks, world_size))
''',
"07.3": '''
import torch.distributed as dist

def reduce_factor(blocks, rank, world_size):
    d_in = blocks[0].shape[1]
    A = torch.zeros(d_in, d_in, dtype=blocks[0].dtype)        # every rank, even with an empty shard
    for i in shard(len(blocks), rank, world_size):
        A += blocks[i].T @ blocks[i]
    dist.all_reduce(A)                                          # sum over the processes, in place
    return A
''',
}
