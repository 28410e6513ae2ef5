"""The hello framework's scheduler in Python, built with componentize-py
against `stoa:scheduler` unmodified: launches HELLO_TASKS hello tasks and
tears the framework down once all of them finished."""

from typing import Optional

import wit_world
from wit_world.imports import driver, environment, types

CPUS, MEM = 0.1, 32.0


class State:
    """The scheduler's state: componentize-py makes a new `WitWorld` for
    every call, so it lives at module level."""

    total = None
    artifact = ""
    pending = []
    finished = set()


def configure():
    # Read at run time: componentize-py snapshots the interpreter when it
    # builds the component, os.environ included.
    env = dict(environment.get_environment())
    State.total = int(env.get("HELLO_TASKS", "5"))
    State.artifact = env.get("STOA_ARTIFACT_TASK", "")
    State.pending = list(range(State.total))


class WitWorld(wit_world.WitWorld):
    def subscribed(self, framework_id: str) -> None:
        driver.log(types.Level.INFO, f"python scheduler subscribed as {framework_id}")
        if State.total is None:
            configure()
        if not State.artifact:
            driver.log(types.Level.ERROR, "STOA_ARTIFACT_TASK is not set")
            driver.teardown()

    def offers(self, offers) -> None:
        for offer in offers:
            have = {s.name: s.value for s in offer.resources}
            room = int(min(have.get("cpus", 0) / CPUS, have.get("mem", 0) / MEM) + 1e-9)
            tasks = []
            while State.pending and len(tasks) < room:
                i = State.pending.pop(0)
                program = types.Program_Wasm(types.WasmProgram(
                    artifact=State.artifact, input=f"py-{i}".encode(), args=[], env=[]))
                tasks.append(types.TaskSpec(
                    id=f"py-{i}", name=f"hello {i}",
                    resources=[types.Scalar("cpus", CPUS), types.Scalar("mem", MEM)],
                    program=program, timeout_ms=30000, fuel=None))
            if tasks:
                driver.accept([offer.id], tasks, None)
            else:
                driver.decline([offer.id], 1000)

    def update(self, status) -> None:
        if status.update_id is not None and status.agent_id is not None:
            driver.acknowledge(status.agent_id, status.task_id, status.update_id)
        if status.state == types.TaskState.FINISHED:
            State.finished.add(status.task_id)
            if len(State.finished) == State.total:
                driver.log(types.Level.INFO, f"python: all {State.total} tasks finished")
                driver.teardown()
        elif status.state in (types.TaskState.FAILED, types.TaskState.ERROR,
                              types.TaskState.LOST, types.TaskState.DROPPED):
            driver.log(types.Level.ERROR, f"{status.task_id} ended {status.state}: {status.message}")
            driver.teardown()

    def rescind(self, offer_id: int) -> None:
        pass

    def failure(self, agent_id: str) -> None:
        pass

    def timer(self, id: int) -> None:
        pass

    def error(self, message: str) -> None:
        driver.log(types.Level.WARN, f"the master refused a call: {message}")

    def message(self, source: Optional[types.MessageSource], data: bytes) -> None:
        pass
