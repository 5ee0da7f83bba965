"""Recovery decisions, without dockerd."""

from __future__ import annotations

from peerd.executor.contract import ContainerInfo
from peerd.executor.reconcile import plan_recovery


def info(task: str, state: str, node: str = "me", cid: str | None = None) -> ContainerInfo:
    return ContainerInfo(container_id=cid or f"c-{task}", name=f"peerd-{node}-{task}", node_id=node,
                         task_id=task, state=state, image="img", cpus=1, memory=1, gpus=(), deadline=None)


def test_recovery_plan() -> None:
    owned = [
        info("run", "running"), info("paused", "paused"), info("done", "exited"), info("dead", "dead"),
        info("never", "created"), info("orphan", "running"), info("old-orphan", "exited"),
        info("busy", "running"), info("theirs", "running", node="other"),
    ]
    plan = plan_recovery(owned, node_id="me", tracked={"run", "paused", "done", "dead", "never", "lost", "busy"},
                         active={"busy"})
    assert [i.task_id for i in plan.reattach] == ["paused", "run"]
    assert [i.task_id for i in plan.collect] == ["dead", "done", "never"]
    assert [i.task_id for i in plan.remove] == ["old-orphan", "orphan"]
    assert plan.missing == ("lost",)


def test_a_second_container_for_one_task_is_removed() -> None:
    plan = plan_recovery([info("t", "running", cid="a"), info("t", "running", cid="b")], node_id="me",
                         tracked={"t"}, active=set())
    assert [i.container_id for i in plan.reattach] == ["a"] and [i.container_id for i in plan.remove] == ["b"]
