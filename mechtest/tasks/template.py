"""Template tasks declared in TOML: a prompt template with slots, slot vocabularies, the answer slot, the
corruption rules and the named positions. IOI ships as one (``mechtest/data/tasks/ioi.task.toml``); a user
declares more in a ``*.task.toml`` file next to the claims, without touching the package.

Torch-free: the declaration is checked when the file is read (collection); the prompts are built by
:mod:`mechtest.tasks.template_data`. Rules map a slot (every occurrence) or one occurrence ``SLOT#k`` (the
k-th ``{SLOT}`` of the template, from 1) to another slot's word or to ``"fresh"`` (a word of the slot's
vocabulary used nowhere else in the prompt). A named position ``SLOT`` is the slot's first occurrence.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

from mechtest.errors import TaskError
from mechtest.spec import PlannedStep
from mechtest.tasks.base import Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"name", "description", "templates", "slots", "vocabularies", "answer", "positions", "corruption",
         "reference", "step", "candidates", "receivers", "reference_heads"}
FRESH = "fresh"


class TemplateTask(Task):
    """A task whose prompts fill a template's slots from word lists (see the module docstring)."""

    FRESH = FRESH

    def __init__(self, spec: dict, where: str = "<task>") -> None:
        self.where = where
        self.spec = spec
        self.name = _string(spec, "name", where)
        where = f"{where}, task {self.name!r}"
        unknown = set(spec) - _KEYS
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
        self.description = str(spec.get("description", ""))
        templates = spec.get("templates")
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise TaskError(f"{where}: 'templates' must be a non-empty list of strings")
        self.templates = tuple(templates)
        self.occurrences = [tuple(SLOT.findall(t)) for t in self.templates]
        slots = _table(spec, "slots", where)
        self.vocabularies = {k: _words(v, f"{where}, vocabulary {k!r}") for k, v in
                             _table(spec, "vocabularies", where).items()}
        for slot, vocab in slots.items():
            if vocab not in self.vocabularies:
                raise TaskError(f"{where}, slot {slot!r}: vocabulary {vocab!r} is not declared")
        self.slots = dict(slots)
        for t, occ in zip(self.templates, self.occurrences):
            missing = sorted(set(occ) - set(slots))
            if missing or sorted(set(occ)) != sorted(slots):
                raise TaskError(f"{where}: template {t!r} must use every slot ({sorted(slots)}) and no other "
                                f"(undeclared: {missing})")
        if any(sorted(Counter(o).items()) != sorted(Counter(self.occurrences[0]).items())
               for o in self.occurrences):
            raise TaskError(f"{where}: every template must use each slot equally often")
        for vocab, words in self.vocabularies.items():
            users = [s for s, v in slots.items() if v == vocab]
            if len(words) < len(users) + 1:
                raise TaskError(f"{where}, vocabulary {vocab!r}: {len(words)} words for {len(users)} slot(s); at "
                                "least one more word than slots is needed for fresh words")
        self.answer = _string(spec, "answer", where)
        if self.answer not in slots:
            raise TaskError(f"{where}: answer {self.answer!r} is not a slot ({', '.join(slots)})")
        named = _table(spec, "positions", where)
        self.named = {k: self._occurrence(v, f"{where}, position {k!r}") if v != "last" else ("last", 0)
                      for k, v in named.items()}
        self.positions = tuple(named)
        self.corruption_rule = self._rule(_table(spec, "corruption", where), f"{where}, corruption")
        self.reference_rule = self._rule(spec.get("reference", {}), f"{where}, reference")
        steps = spec.get("step")
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise TaskError(f"{where}: 'step' must be an array of tables ([[task.step]])")
        plan = []
        for s in steps:
            extra = set(s) - {"group", "position", "receivers", "site"}
            if extra:
                raise TaskError(f"{where}, step: unknown key(s) {sorted(extra)}")
            plan.append(PlannedStep(_string(s, "group", where), _string(s, "position", where),
                                    s.get("receivers"), s.get("site")))
        self.step_plan = tuple(plan)
        self.groups = tuple(s.group for s in plan)
        self.candidates = {g: int(k) for g, k in _table(spec, "candidates", where).items()}
        self.receivers = {g: int(k) for g, k in spec.get("receivers", {}).items()}
        self.reference_heads = int(spec.get("reference_heads", 144))
        self.check()
        for g in self.groups:
            self.candidates.setdefault(g, 1)
        for step in self.step_plan:  # receivers default to the size of the group they come from
            if step.previous is not None:
                self.receivers.setdefault(step.group, self.candidates[step.previous])

    def _occurrence(self, text, where: str) -> tuple[str, int]:
        if not isinstance(text, str):
            raise TaskError(f"{where}: {text!r} must be a slot occurrence such as 'S#2' or 'last'")
        slot, _, k = text.partition("#")
        count = self.occurrences[0].count(slot)
        if slot not in self.slots or (k and not (k.isdigit() and 1 <= int(k) <= count)):
            raise TaskError(f"{where}: {text!r} is not a slot occurrence ({', '.join(self.slots)}, SLOT#k)")
        return slot, int(k) if k else 0

    def _rule(self, table, where: str) -> list[tuple[tuple[str, int], str]]:
        if not isinstance(table, dict):
            raise TaskError(f"{where}: must be a table of slot occurrence -> slot or \"fresh\"")
        rule = []
        for target, source in table.items():
            occ = self._occurrence(target, where)
            if source != FRESH and source not in self.slots:
                raise TaskError(f"{where}, {target!r}: {source!r} is neither a slot nor \"fresh\"")
            rule.append((occ, source))
        return sorted(rule, key=lambda r: r[0][1])  # whole slots first, then single occurrences

    def pieces(self, t: int) -> list:
        """Template ``t`` as literal text and (slot, k) marks, k the slot's occurrence number from 1."""
        template, parts, seen, pos = self.templates[t], [], {}, 0
        for m in SLOT.finditer(template):
            parts.append(template[pos:m.start()])
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
            parts.append((m.group(1), seen[m.group(1)]))
            pos = m.end()
        parts.append(template[pos:])
        return parts

    def identity(self) -> str:
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.name}@{digest[:16]}"

    def chance(self, n_boxes):
        return 1 / sum(v == self.slots[self.answer] for v in self.slots.values())

    def dataset(self, tokenizer, n, *, n_boxes=7, seed=0):
        from mechtest.tasks.template_data import build

        return build(self, tokenizer, n, seed=seed)

    def reference(self, tokenizer, n, *, n_boxes=7, seed=0):
        from mechtest.tasks.template_data import build

        return build(self, tokenizer, n, seed=seed, rule=self.reference_rule, purpose="reference")

    def corruption(self, base, tokenizer, *, seed=0):
        from mechtest.tasks.template_data import corrupt

        return corrupt(self, base, tokenizer, seed=seed)

    def check_vocabulary(self, tokenizer):
        from mechtest.tasks.template_data import token_ids

        token_ids(self, tokenizer)


def parse_tasks(text: str, where: str, folder: Path | None = None) -> list[TemplateTask]:
    """The ``[[task]]`` tables of a TOML text; vocabularies given as a file name are read from ``folder``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{where}: not valid TOML: {e}") from None
    tables = data.get("task", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise TaskError(f"{where}: tasks go in [[task]] tables")
    tasks = []
    for table in tables:
        vocabs = table.get("vocabularies", {})
        if isinstance(vocabs, dict):
            table = {**table, "vocabularies": {k: _read_csv(v, folder, where) if isinstance(v, str) else v
                                               for k, v in vocabs.items()}}
        tasks.append(TemplateTask(table, where))
    return tasks


def load_task_file(path: str | Path) -> list[TemplateTask]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: cannot be read: {e}") from None
    return parse_tasks(text, str(path), path.parent)


def _read_csv(name: str, folder: Path | None, where: str) -> list[str]:
    """The first column of a CSV file (a header row named like the column is skipped if it says 'word')."""
    path = Path(name) if Path(name).is_absolute() or folder is None else folder / name
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]
    except OSError as e:
        raise TaskError(f"{where}: vocabulary file {name!r} cannot be read: {e.strerror or e}") from None
    return rows[1:] if rows and rows[0].lower() in ("word", "words") else rows


def _string(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where}: {key!r} must be a non-empty string")
    return value


def _table(table: dict, key: str, where: str) -> dict:
    value = table.get(key)
    if not isinstance(value, dict) or not value:
        raise TaskError(f"{where}: {key!r} must be a non-empty table")
    return value


def _words(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise TaskError(f"{where}: must be a list of words or a CSV file name")
    bad = [w for w in value if not w or w != w.strip() or " " in w]
    if bad:
        raise TaskError(f"{where}: {bad[0]!r} is not a single word")
    if len(set(value)) != len(value):
        raise TaskError(f"{where}: duplicate words {sorted({w for w in value if value.count(w) > 1})}")
    return tuple(value)

