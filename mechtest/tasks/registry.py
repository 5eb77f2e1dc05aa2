"""Tasks by name, like metrics: the shipped ones and those a ``conftest.py`` or a task file registers.

Torch-free, so claims are checked against it at collection. ``entity_tracking`` (the default of every
claim) and ``ioi`` are built in; :func:`register_task` adds a :class:`~mechtest.tasks.base.Task` instance
(or class), :func:`register_task_file` the tasks of a ``*.task.toml`` file.
"""

from __future__ import annotations

from pathlib import Path

from mechtest.errors import TaskError
from mechtest.tasks.base import DEFAULT_TASK, Task

TASKS: dict[str, Task] = {}


def register_task(task: Task | type[Task], *, replace: bool = False):
    """Make ``task`` available to claims as ``task = "<name>"``; usable as a class decorator. A second task
    of the same name is an error unless ``replace`` (the same object again is not)."""
    instance = task() if isinstance(task, type) else task
    if not isinstance(instance, Task):
        raise TaskError(f"{instance!r} is not a mechtest.tasks.base.Task")
    instance.check()
    _builtins()
    known = TASKS.get(instance.name)
    if known is not None and not replace and known is not instance and known.identity() != instance.identity():
        raise TaskError(f"task {instance.name!r} is registered already; pass replace=True to redefine it")
    TASKS[instance.name] = instance
    return task


def get_task(name: str | Task | None = None) -> Task:
    """The task called ``name`` (None: entity tracking); an unknown name is a one-line TaskError."""
    if isinstance(name, Task):
        return name
    _builtins()
    name = DEFAULT_TASK if name is None else name
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def task_of(dataset) -> Task:
    """The task a dataset (or circuit) was made for; objects without one are entity tracking."""
    return get_task(getattr(dataset, "task", None) or DEFAULT_TASK)


def task_names() -> list[str]:
    _builtins()
    return sorted(TASKS)


def register_task_file(path: str | Path, *, replace: bool = False) -> list[Task]:
    """Register every ``[[task]]`` of a TOML file (see :mod:`mechtest.tasks.template`)."""
    from mechtest.tasks.template import load_task_file

    tasks = load_task_file(path)
    for task in tasks:
        register_task(task, replace=replace)
    return tasks


def _builtins() -> None:
    if DEFAULT_TASK in TASKS:
        return
    from importlib import resources

    from mechtest.tasks.entity_task import EntityTracking
    from mechtest.tasks.template import parse_tasks

    TASKS[DEFAULT_TASK] = EntityTracking()
    text = resources.files("mechtest.data").joinpath("tasks/ioi.task.toml").read_text(encoding="utf-8")
    for task in parse_tasks(text, "mechtest/data/tasks/ioi.task.toml"):
        TASKS[task.name] = task
