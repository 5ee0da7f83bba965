"""How the CLI prints: one JSON document with ``--json``, aligned text otherwise.

Pure formatting of the control socket's views (``peerd.control.ops``); no I/O
beyond writing to the streams it is given.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from protocol.reachability import of_addrs
from protocol.schema import Value


def _jsonable(obj: object) -> object:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def print_json(doc: object, out: TextIO | None = None) -> None:
    """Write ``doc`` as one JSON document (bytes become text)."""
    import json  # only --json needs it; kept off the CLI's import path

    stream = out or sys.stdout
    stream.write(json.dumps(doc, indent=2, default=_jsonable) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def pairs(items: Sequence[tuple[str, str]]) -> str:
    """``key   value`` lines, keys padded to one width."""
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in items)


def short_id(peer_id: object) -> str:
    text = str(peer_id or "-")
    return text if len(text) <= 20 else f"{text[:8]}…{text[-6:]}"


def when(ts: object) -> str:
    """A timestamp as local time, or ``-``."""
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def remaining(ts: object, now: float | None = None) -> str:
    if not isinstance(ts, int | float):
        return "-"
    left = ts - (time.time() if now is None else now)
    return "expired" if left <= 0 else f"{left:.0f}s"


def size(n: object) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


# Prices in [pricing] and every cost are in credits (per hour for prices).
CREDITS = "credits"
COST_DIGITS = 3  # significant digits of a cost


def cost(value: object) -> str:
    """A cost with its unit and three significant digits: ``0.000139 credits``.

    Never in exponent form and never rounded to zero: a one-second job at
    0.5 credits per hour costs 0.000139 credits, not "0".
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    if value == 0:
        return f"0 {CREDITS}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(max(COST_DIGITS - 1 - magnitude, 2), 15)
    return f"{value:.{decimals}f} {CREDITS}"


def _num(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


# ---------------------------------------------------------------- views
def status_text(view: Mapping[str, Value]) -> str:
    addrs = view.get("addrs")
    addr_list = [str(a) for a in addrs] if isinstance(addrs, list) else []
    counters = view.get("counters")
    counter_text = (
        " ".join(f"{k}={v}" for k, v in sorted(counters.items())) if isinstance(counters, dict) else ""
    )
    items = [
        ("peer id", str(view.get("peer_id"))),
        ("role", str(view.get("role"))),
        ("version", str(view.get("version"))),
        ("peers", f"{view.get('peers_connected')} connected, {view.get('peers_known')} known"),
        ("tasks", f"{view.get('tasks_running')} running, {view.get('tasks_queued')} queued"),
        ("draining", "yes" if view.get("draining") else "no"),
        ("addresses", addr_list[0] if addr_list else "-"),
        *(("", a) for a in addr_list[1:]),
        ("counters", counter_text or "-"),
        ("config reload", _reload_text(view.get("config_reload"))),
        *_reach_rows(view.get("reachability")),
    ]
    return pairs(items)


def _reach_rows(reach: Value) -> list[tuple[str, str]]:
    """``reachability``: the state, the relayed addresses in use and the hint (P2PService.reachability())."""
    if not isinstance(reach, dict):
        return []
    relays = reach.get("relay_addrs")
    relay_list = [str(a) for a in relays] if isinstance(relays, list) else []
    return [
        ("reachability", str(reach.get("reachability", "-"))),
        ("relayed via", relay_list[0] if relay_list else "-"),
        *(("", a) for a in relay_list[1:]),
        ("hint", str(reach.get("hint", "-"))),
    ]


def _reload_text(reload: Value) -> str:
    if not isinstance(reload, dict):
        return "-"
    if reload.get("ok"):
        return f"ok ({when(reload.get('at'))})"
    return f"FAILED ({when(reload.get('at'))}), old settings kept: {reload.get('error')}"


def _gpus(advert: Mapping[str, Value]) -> str:
    gpus = advert.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        return "-"
    models = sorted({str(g.get("model", "?")) for g in gpus if isinstance(g, dict)})
    return f"{len(gpus)}x {'/'.join(models)}"


def peers_text(views: Sequence[Mapping[str, Value]], now: float | None = None) -> str:
    rows = []
    for view in views:
        advert = view.get("advert")
        ad: Mapping[str, Value] = advert if isinstance(advert, dict) else {}
        rows.append([
            str(view.get("peer_id")),
            str(ad.get("role", "-")),
            f"{_num(ad.get('free_cpus'))}/{_num(ad.get('cpus'))}",
            f"{size(ad.get('free_memory'))}/{size(ad.get('memory'))}",
            _gpus(ad),
            _num(ad.get("price_cpu_hour")),
            _num(ad.get("price_gpu_hour")),
            remaining(ad.get("expires_at"), now) if ad else "-",
            _reach(view.get("addrs")),
            _score(view.get("reputation")),
        ])
    headers = ["PEER", "ROLE", "CPUS FREE", "MEMORY FREE", "GPUS", "CPU/H", "GPU/H", "ADVERT", "REACH", "SCORE"]
    return table(headers, rows) if rows else "no peers known"


def _score(reputation: Value) -> str:
    """The reputation score, marked ``new`` (little evidence yet) or ``!`` (distrusted)."""
    if not isinstance(reputation, dict):
        return "-"
    mark = " !" if reputation.get("distrusted") else " new" if reputation.get("newcomer") else ""
    return f"{_num(reputation.get('score'))}{mark}"


def peer_text(view: Mapping[str, Value]) -> str:
    """``peerd peer ID``: the reputation summary, then the history, newest first."""
    rep = view.get("reputation")
    rep = rep if isinstance(rep, dict) else {}
    counts = rep.get("counts")
    tallies = ", ".join(f"{k} {v}" for k, v in counts.items()) if isinstance(counts, dict) and counts else "none"
    latency = rep.get("latency")
    lines = [
        f"peer:     {view.get('peer_id')}",
        f"advert:   {'live' if view.get('advert') else 'none (not in the peer table)'}",
        f"score:    {_score(rep)}",
        f"events:   {tallies}",
        f"latency:  {_num(latency) + 's' if isinstance(latency, (int, float)) else '-'} (asking to lease, mean)",
    ]
    history = view.get("history")
    rows = [
        [str(h.get("event")), str(h.get("task_id")), when(h.get("at")),
         _num(h.get("latency")) if h.get("latency") is not None else "-"]
        for h in (history if isinstance(history, list) else []) if isinstance(h, dict)
    ]
    lines.append("")
    lines.append(table(["EVENT", "TASK", "AT", "LATENCY"], rows) if rows else "no dealings with this peer")
    return "\n".join(lines)


def _reach(addrs: Value) -> str:
    """public or relayed, as the peer's advertised addresses show (protocol.reachability.of_addrs)."""
    return str(of_addrs([str(a) for a in addrs])) if isinstance(addrs, list) else "-"


def _command(spec: Value) -> str:
    if not isinstance(spec, dict):
        return "-"
    command = spec.get("command")
    text = " ".join(str(c) for c in command) if isinstance(command, list) else ""
    return text if len(text) <= 40 else text[:39] + "…"


def _image(spec: Value) -> str:
    return str(spec.get("image")) if isinstance(spec, dict) else "-"


def queue_note(view: Mapping[str, Value], now: float | None = None) -> str:
    """``#2, 40s`` for a queued task: its place (1 = placed next) and how long it has waited; else ""."""
    queue = view.get("queue")
    if view.get("state") != "queued" or not isinstance(queue, dict):
        return ""
    place, since = queue.get("position"), queue.get("queued_at")
    parts = [f"#{place}" if isinstance(place, int) else "trying"]
    if isinstance(since, int | float):
        parts.append(_age((time.time() if now is None else now) - since))
    return ", ".join(parts)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _state(view: Mapping[str, Value]) -> str:
    note = queue_note(view)
    return f"{view.get('state')} ({note})" if note else str(view.get("state"))


def tasks_text(views: Sequence[Mapping[str, Value]]) -> str:
    rows = [
        [str(v.get("task_id")), _state(v), _num(v.get("exit_code")), str(v.get("role")),
         short_id(v.get("provider")), when(v.get("created_at")), _command(v.get("spec"))]
        for v in views
    ]
    headers = ["TASK", "STATE", "EXIT", "ROLE", "PROVIDER", "CREATED", "COMMAND"]
    return table(headers, rows) if rows else "no tasks"


def attempts_text(attempts: Value) -> str:
    if not isinstance(attempts, list) or not attempts:
        return "  (none)"
    rows = [
        [str(a.get("provider")), str(a.get("outcome")), str(a.get("reason") or "-"), str(a.get("detail") or "")]
        for a in attempts if isinstance(a, dict)
    ]
    text = table(["PROVIDER", "OUTCOME", "REASON", "DETAIL"], rows)
    return "\n".join("  " + line for line in text.splitlines())


def receipt_line(receipt: Value) -> str:
    if not isinstance(receipt, dict):
        return "-"
    verified = "verified" if receipt.get("verified") else "NOT VERIFIED"
    return f"cost {cost(receipt.get('cost'))}, {receipt.get('state')}, signatures {verified}"


def task_text(view: Mapping[str, Value]) -> str:
    items = [
        ("task", str(view.get("task_id"))),
        ("state", _state(view)),
        ("exit code", _num(view.get("exit_code"))),
        ("role", str(view.get("role"))),
        ("provider", str(view.get("provider") or "-")),
        ("command", _command(view.get("spec"))),
        ("image", _image(view.get("spec"))),
        ("created", when(view.get("created_at"))),
        ("updated", when(view.get("updated_at"))),
        ("detail", str(view.get("detail") or "-")),
        ("receipt", receipt_line(view.get("receipt"))),
    ]
    parts = [pairs(items), "attempts:", attempts_text(view.get("attempts"))]
    ranks = view.get("ranks")
    if isinstance(ranks, list) and ranks:
        parts.append(ranks_text(ranks))
    for stream in ("stdout", "stderr"):
        text = view.get(stream)
        if isinstance(text, str) and text:
            parts.append(f"{stream}:\n{text.rstrip(chr(10))}")
    return "\n".join(parts)


def outcome_line(view: Mapping[str, Value]) -> str:
    """One line saying how a task ended, for ``submit --wait``."""
    state = view.get("state")
    line = f"task {view.get('task_id')} {state}"
    if view.get("exit_code") is not None:
        line += f" (exit {view.get('exit_code')})"
    if view.get("provider"):
        line += f" on {short_id(view.get('provider'))}"
    receipt = view.get("receipt")
    if isinstance(receipt, dict):
        line += f"; {receipt_line(receipt)}"
    if state != "succeeded" and view.get("detail"):
        line += f": {view.get('detail')}"
    return line


def receipts_text(views: Sequence[Mapping[str, Value]]) -> str:
    rows = [
        [str(r.get("task_id")), str(r.get("state")), cost(r.get("cost")), short_id(r.get("provider")),
         short_id(r.get("requester")), "yes" if r.get("verified") else "NO"]
        for r in views
    ]
    headers = ["TASK", "STATE", "COST", "PROVIDER", "REQUESTER", "VERIFIED"]
    return table(headers, rows) if rows else "no receipts"


def doctor_text(checks: Sequence[Mapping[str, Value]]) -> str:
    rows = [["ok" if c.get("ok") else "FAIL", str(c.get("name")), str(c.get("detail") or "")] for c in checks]
    return table(["", "CHECK", "DETAIL"], rows) if rows else "no checks"


def ranks_text(ranks: Sequence[Value]) -> str:
    """A gang's ranks: one row each."""
    rows = [
        [_num(r.get("rank")), short_id(r.get("provider")) if r.get("provider") else "-", str(r.get("state")),
         _num(r.get("exit_code")), str(r.get("task_id"))]
        for r in ranks if isinstance(r, dict)
    ]
    return "ranks:\n" + table(["RANK", "PROVIDER", "STATE", "EXIT", "TASK"], rows)


def verification_text(verification: Mapping[str, Value]) -> str:
    """A replica group's comparison: its state, then one row per replica."""
    replicas = verification.get("replicas")
    rows = [
        [str(r.get("task_id")), short_id(r.get("provider")) if r.get("provider") else "-", str(r.get("state")),
         str(r.get("output_id") or "-")[:23], _num(r.get("exit_code")), str(r.get("verdict") or "-")]
        for r in (replicas if isinstance(replicas, list) else []) if isinstance(r, dict)
    ]
    head = f"verification: {verification.get('state')} ({verification.get('mode')}, {len(rows)} replicas)"
    return head + "\n" + table(["TASK", "PROVIDER", "STATE", "OUTPUT", "EXIT", "VERDICT"], rows)
