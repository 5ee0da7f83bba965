"""Data-parallel training of a two-layer GCN over gloo, on a synthetic graph: peerd's example workload.

The graph is a stochastic block model generated from ``--seed`` identically on every rank (no download):
``--graph-nodes`` nodes in ``--communities`` equal blocks, ``--degree`` expected neighbours per node of which
a fraction ``--homophily`` lie in the node's own block. Labels are the blocks; features are the block's
random centre, weak, plus Gaussian noise, so a model that ignores the edges does poorly and one that
aggregates neighbours does well.

Model: ``logits = Â · relu(Â X W1) · W2`` with ``Â = D^-1/2 (A + I) D^-1/2`` a ``torch.sparse`` CSR matrix.
``Â X`` does not depend on the weights, so every rank computes it once; a training step for a batch S of
nodes then needs ``relu((Â X)[N(S)] W1)`` only for S's neighbourhood N(S) and the rows S of Â: the exact
full-graph GCN, at a cost that grows with the batch, not the graph.

Data parallelism: each epoch the training nodes are shuffled (same order on every rank) into global
batches of ``--batch`` nodes; rank r of W takes every W-th node of each batch, and the summed gradients are
all-reduced (one flat gloo ``all_reduce`` per step) and divided by the global batch size. W ranks therefore
take the same steps as one rank, up to the order of floating-point sums: 1-node and W-node test accuracy
agree within ``ACCURACY_TOLERANCE`` (no dropout, identical initialisation from the seed).

Environment (torchrun's, and peerd's gang contract): MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE through
``env://``; GLOO_SOCKET_IFNAME when set. WORLD_SIZE=1 (the default) needs no network and no process group.

Output: JSON lines on stdout, one per epoch (``{"event": "epoch", "epoch", "time_s", "loss", ...}``) and one
at the end (``{"event": "result", "test_accuracy", "epoch_time_s", ...}``; ``epoch_time_s`` is the mean
without the first, warm-up epoch when there are several); ``--out`` (default /out) gets
``result.json`` (every rank) and ``model.pt`` (rank 0). Runs as any user on a read-only root file system.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

# The image has no NumPy (torch does not need it here) and CSR support is "beta": say neither on every run.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812 (torch's own convention)

ACCURACY_TOLERANCE = 0.01  # |test accuracy on 1 rank - on W ranks|, same seed and arguments


@dataclass(frozen=True)
class Graph:
    adj: torch.Tensor  # Â, sparse CSR, n × n
    features: torch.Tensor  # X, n × f
    labels: torch.Tensor  # n
    train: torch.Tensor  # node ids
    test: torch.Tensor  # node ids
    edges: int  # undirected, without self-loops


def stochastic_block_model(args: argparse.Namespace) -> Graph:
    """The same graph on every rank: everything is drawn from one generator seeded with ``args.seed``."""
    gen = torch.Generator().manual_seed(args.seed)
    n, k = args.graph_nodes, args.communities
    size = n // k
    n = size * k
    order = torch.randperm(n, generator=gen)  # node order[j] is in block j // size
    labels = torch.empty(n, dtype=torch.int64)
    labels[order] = torch.arange(n) // size
    draws = n * args.degree // 2
    inside = int(draws * args.homophily)
    src = torch.randint(n, (draws,), generator=gen)
    dst = torch.randint(n, (draws,), generator=gen)  # a random node anywhere (also in its own block: SBM p_out)
    same = (src[:inside] // size) * size + torch.randint(size, (inside,), generator=gen)
    dst[:inside] = same  # the first `inside` draws stay in the block
    src, dst = order[src], order[dst]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    both = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    adj = torch.sparse_coo_tensor(both, torch.ones(both.shape[1]), (n, n)).coalesce()
    indices = adj.indices()
    edges = indices.shape[1] // 2
    loops = torch.arange(n).repeat(2, 1)
    indices = torch.cat([indices, loops], dim=1)
    degree = torch.bincount(indices[0], minlength=n).float()
    norm = degree[indices[0]].rsqrt() * degree[indices[1]].rsqrt()
    adj_hat = torch.sparse_coo_tensor(indices, norm, (n, n)).coalesce().to_sparse_csr()
    centres = torch.randn(k, args.features, generator=gen)
    features = args.signal * centres[labels] + torch.randn(n, args.features, generator=gen)
    split = torch.randperm(n, generator=gen)
    cut = int(n * args.train_fraction)
    return Graph(adj_hat, features, labels, split[:cut].sort().values, split[cut:].sort().values, edges)


class GCN(torch.nn.Module):
    """Two graph convolutions: ``Â relu(Â X W1) W2``, evaluated only where a batch needs it."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.lin1 = torch.nn.Linear(features, hidden)
        self.lin2 = torch.nn.Linear(hidden, classes)

    def forward(self, adj_rows: torch.Tensor, ax_rows: torch.Tensor) -> torch.Tensor:
        """``adj_rows``: Â's rows of the batch, restricted to the columns of its neighbourhood N;
        ``ax_rows``: (Â X)[N]. Returns the batch's logits."""
        hidden = F.relu(self.lin1(ax_rows))
        return adj_rows @ self.lin2(hidden)


def batch_inputs(graph: Graph, ax: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Â[nodes, N] (sparse CSR, columns renumbered) and (Â X)[N], N = the nodes' neighbourhood."""
    crow, col, val = graph.adj.crow_indices(), graph.adj.col_indices(), graph.adj.values()
    starts = crow[nodes]
    counts = crow[nodes + 1] - starts
    offsets = torch.cumsum(counts, 0)
    within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets - counts, counts)
    positions = torch.repeat_interleave(starts, counts) + within
    neighbourhood, local = torch.unique(col[positions], return_inverse=True)
    sub = torch.sparse_csr_tensor(torch.cat([torch.zeros(1, dtype=offsets.dtype), offsets]), local,
                                  val[positions], (len(nodes), len(neighbourhood)))
    return sub, ax.index_select(0, neighbourhood)


def all_reduce_gradients(model: torch.nn.Module, world: int, scale: float, loss: torch.Tensor) -> float:
    """Sum every rank's gradients and losses (one flat gloo all_reduce), multiply the gradients by ``scale``;
    returns the summed loss. A rank with no nodes in this batch contributes zeros."""
    params = list(model.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([*(p.grad.reshape(-1) for p in params if p.grad is not None), loss.detach().reshape(1)])
    if world > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        assert p.grad is not None
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p) * scale)
        offset += p.numel()
    return float(flat[-1])


def accuracy(model: GCN, graph: Graph, ax: torch.Tensor, nodes: torch.Tensor) -> float:
    with torch.no_grad():
        adj_rows, ax_rows = batch_inputs(graph, ax, nodes)
        predicted = model(adj_rows, ax_rows).argmax(dim=1)
        return float((predicted == graph.labels[nodes]).float().mean())


def mean_epoch_time(times: list[float]) -> float:
    """The mean epoch time, without the first epoch (allocator and thread-pool warm-up) when there are more."""
    steady = times[1:] or times
    return sum(steady) / len(steady)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (``docker --cpus``, peerd's
    ``--cpus``), which the affinity does not show. More torch threads than that are much slower, not faster."""
    cpus = len(os.sched_getaffinity(0))
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), Path(
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()])):
        try:
            quota, period = parse(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
        break
    return cpus


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--graph-nodes", type=int, default=100_000)
    p.add_argument("--communities", type=int, default=10)
    p.add_argument("--degree", type=int, default=10, help="expected neighbours per node")
    p.add_argument("--homophily", type=float, default=0.7, help="fraction of edges inside a block")
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--signal", type=float, default=0.06, help="weight of the block's centre in the features")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=2048, help="global batch (nodes), split over the ranks")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--train-fraction", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: usable_cpus())")
    p.add_argument("--out", default="/out", help="result.json (and model.pt on rank 0); '' writes nothing")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    if world > 1:
        timeout = timedelta(seconds=float(os.environ.get("GNN_DIST_TIMEOUT_S", "300")))
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout)
    try:
        return train(args, rank, world, threads)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int, world: int, threads: int) -> int:
    started = time.perf_counter()
    torch.sparse.check_sparse_tensor_invariants.disable()  # the graph is built here, valid by construction
    graph = stochastic_block_model(args)
    ax = graph.adj @ graph.features  # Â X: fixed, so computed once
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = GCN(args.features, args.hidden, args.communities)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    setup_s = time.perf_counter() - started
    emit({"event": "setup", "rank": rank, "world_size": world, "threads": threads, "nodes": len(graph.labels),
          "edges": graph.edges, "train_nodes": len(graph.train), "test_nodes": len(graph.test),
          "setup_s": round(setup_s, 3), "torch": torch.__version__})
    epoch_times: list[float] = []
    for epoch in range(1, args.epochs + 1):
        began = time.perf_counter()
        order = graph.train[torch.randperm(len(graph.train), generator=torch.Generator().manual_seed(
            args.seed * 1000 + epoch))]
        total_loss, steps = 0.0, 0
        for start in range(0, len(order), args.batch):
            batch = order[start:start + args.batch]
            mine = batch[rank::world]
            optimizer.zero_grad(set_to_none=False)
            loss = torch.zeros(())
            if len(mine):
                adj_rows, ax_rows = batch_inputs(graph, ax, mine)
                loss = F.cross_entropy(model(adj_rows, ax_rows), graph.labels[mine], reduction="sum")
                loss.backward()
            total_loss += all_reduce_gradients(model, world, 1.0 / len(batch), loss)
            optimizer.step()
            steps += 1
        epoch_times.append(time.perf_counter() - began)
        emit({"event": "epoch", "rank": rank, "epoch": epoch, "time_s": round(epoch_times[-1], 4),
              "steps": steps, "loss": round(total_loss / len(order), 5)})  # every rank's, the mean
    test_accuracy = accuracy(model, graph, ax, graph.test)
    result = {"event": "result", "rank": rank, "world_size": world, "epochs": args.epochs,
              "test_accuracy": round(test_accuracy, 5), "tolerance": ACCURACY_TOLERANCE,
              "epoch_time_s": round(mean_epoch_time(epoch_times), 4), "first_epoch_s": round(epoch_times[0], 4),
              "total_s": round(time.perf_counter() - started, 3)}
    emit(result)
    if args.out:
        out = Path(args.out)
        (out / "result.json").write_text(json.dumps({**result, "epoch_times_s": epoch_times}) + "\n")
        if rank == 0:
            torch.save(model.state_dict(), out / "model.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
