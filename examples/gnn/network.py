"""The GNN example through a local peerd network (what examples/gnn/run executes).

Starts a seed, 3 providers and a requester (``peerd.devnet.DevNet``: real ``peerd run`` processes on
127.0.0.1), then submits ``train.py`` from the requester: once on 1 node (``peerd submit --wait --json``),
once as a gang of ``--nodes`` (``peerd submit --nodes N``, whose ``--json`` result has ``state`` and
``ranks``: ``{rank, provider, state, exit_code, stdout, stderr}``). For each it prints the mean epoch time,
the test accuracy (1 node and N nodes must agree within train.py's tolerance) and the cost per epoch from
the co-signed receipts, beside what the same wall time costs on the smallest AWS GPU instance.

Costs in peerd are in credits at the providers' prices ([pricing] cpu_hour, here the default); a dollar
value of a credit is not defined, so the cloud figure is shown beside it, not converted.

    PYTHONPATH=. .venv/bin/python examples/gnn/network.py [--epochs N] [--nodes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from peerd.cli.output import cost
from peerd.devnet import DevNet, NodeProc

IMAGE = "peerd-examples/gnn:1"
CLOUD_NAME = "AWS p3.2xlarge (1 V100, the smallest p3)"
CLOUD_USD_PER_HOUR = 3.06
TOLERANCE = 0.01  # train.py's ACCURACY_TOLERANCE
PROVIDERS = ("provider-1", "provider-2", "provider-3")


@dataclass
class Run:
    nodes: int
    state: str
    epoch_time_s: float | None = None
    test_accuracy: float | None = None
    cost_credits: float | None = None
    epochs: int = 0
    detail: str = ""

    @property
    def cost_per_epoch(self) -> float | None:
        return None if self.cost_credits is None or not self.epochs else self.cost_credits / self.epochs

    @property
    def cloud_usd_per_epoch(self) -> float | None:
        return None if self.epoch_time_s is None else CLOUD_USD_PER_HOUR * self.epoch_time_s / 3600


def results(stdout: str) -> list[dict[str, object]]:
    """train.py's JSON lines in a job's output."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def receipt_costs(requester: NodeProc) -> dict[str, float]:
    """Every receipt the requester holds: id (task and provider) → cost in credits."""
    out = requester.peerd("receipts", "--json")
    listed = json.loads(out.stdout) if out.returncode == 0 else []
    return {f"{r.get('task_id')}/{r.get('provider')}": float(r.get("cost") or 0.0) for r in listed}


def submit(requester: NodeProc, nodes: int, args: argparse.Namespace) -> Run:
    before = receipt_costs(requester)
    gang = ["--nodes", str(nodes)] if nodes > 1 else []
    done = requester.peerd("submit", "--image", IMAGE, "--cpus", str(args.cpus), "--memory", args.memory,
                           "--timeout", "30m", *gang, "--wait", "--json", "--",
                           "python3", "/opt/gnn/train.py", "--epochs", str(args.epochs), "--out", "/out",
                           timeout=3600)
    try:
        view = json.loads(done.stdout)
    except ValueError:
        return Run(nodes, "error", detail=(done.stderr or done.stdout).strip()[-400:])
    ranks = view.get("ranks") if nodes > 1 else [view]
    if not isinstance(ranks, list) or len(ranks) != nodes:
        return Run(nodes, str(view.get("state")), detail=f"no ranks in the result: {done.stdout[-400:]}")
    finals = [next((r for r in results(str(rank.get("stdout") or "")) if r.get("event") == "result"), None)
              for rank in ranks]
    spent = {k: v for k, v in receipt_costs(requester).items() if k not in before}
    run = Run(nodes, str(view.get("state")), cost_credits=sum(spent.values()) if spent else None)
    if any(f is None for f in finals):
        run.detail = "; ".join(f"rank {r.get('rank', 0)}: {str(r.get('stderr') or '').strip()[-300:]}"
                               for r in ranks)
        return run
    run.epochs = args.epochs
    run.epoch_time_s = max(float(f["epoch_time_s"]) for f in finals if f)  # the slowest rank sets the pace
    run.test_accuracy = float(finals[0]["test_accuracy"]) if finals[0] else None
    return run


def report(runs: list[Run]) -> None:
    print(f"\n{'nodes':>5}  {'state':<10} {'epoch s':>8} {'accuracy':>8}  {'cost/epoch':>18}  "
          f"{'p3.2xlarge $/epoch at this time':>32}")
    for run in runs:
        epoch = f"{run.epoch_time_s:.3f}" if run.epoch_time_s is not None else "-"
        acc = f"{run.test_accuracy:.4f}" if run.test_accuracy is not None else "-"
        cloud = f"${run.cloud_usd_per_epoch:.6f}" if run.cloud_usd_per_epoch is not None else "-"
        print(f"{run.nodes:>5}  {run.state:<10} {epoch:>8} {acc:>8}  {cost(run.cost_per_epoch):>18}  {cloud:>32}")
        if run.detail:
            print(f"       {run.detail}")
    print(f"\ncloud price: {CLOUD_NAME} ${CLOUD_USD_PER_HOUR}/h; its column is that price for this run's own"
          " epoch time (a V100 would be faster; not measured here). peerd's cost is the receipts' total"
          " (start-up included) over the epochs, in credits at the providers' prices.")
    accuracies = [r.test_accuracy for r in runs if r.test_accuracy is not None]
    if len(accuracies) == len(runs) > 1:
        agree = max(accuracies) - min(accuracies) <= TOLERANCE
        print(f"accuracy agrees within {TOLERANCE}: {'yes' if agree else 'NO'}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the GNN example through a local peerd network")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3, help="gang size (1 skips the gang run)")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per node")
    parser.add_argument("--memory", default="2G", help="memory per node")
    parser.add_argument("--json", action="store_true", help="print one JSON line with every run's figures")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    with DevNet() as net:
        net.gangs = True
        print("starting a seed, 3 providers and a requester on 127.0.0.1 …", file=sys.stderr, flush=True)
        net.add_seed()
        for name in PROVIDERS:
            net.add(name, "provider")
        requester = net.add("requester", "requester")
        net.wait_adverts("requester", list(PROVIDERS))
        for nodes in sorted({1, args.nodes}):
            print(f"training on {nodes} node(s), {args.epochs} epochs …", file=sys.stderr, flush=True)
            runs.append(submit(requester, nodes, args))
    report(runs)
    if args.json:
        print(json.dumps([{**asdict(r), "cost_per_epoch": r.cost_per_epoch,
                           "cloud_usd_per_epoch": r.cloud_usd_per_epoch} for r in runs]))
    accuracies = [r.test_accuracy for r in runs if r.test_accuracy is not None]
    if len(accuracies) < len(runs):
        return 1
    return 0 if max(accuracies) - min(accuracies) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
