"""The cache layer: path-patching scores stored in the on-disk activation cache.

A result is keyed on the model's fingerprint, the prompts' token ids and every parameter that changes it
(receivers, seed, triage and its sizes), so xdist workers, later runs and every claim asking for the same thing
share one computation.
"""

from __future__ import annotations

from mechtest.spec import derived_seed
from mechtest.tasks.base import DEFAULT_TASK


def cached_path_patching(model, base, receivers: dict[str, int], *, seed: int = 0, cache=None, triage: bool = False,
                         sizes: dict[str, int] | None = None, batch_size: int = 100, progress: bool = True):
    """The four path-patching steps on ``base`` (corrupted with the derived ``"corruption"`` seed), read from
    ``cache`` if there. ``triage=True`` verifies exactly only attribution's top candidates for ``sizes``.

    Only the score matrices (and triage's verified masks) are stored; each step's receivers follow from the
    previous step's scores (``chain``), so the rebuilt result equals the computed one.
    """
    from mechtest.methods.path_patching import StepResult, chain, path_patching
    from mechtest.methods.path_patching import triage as triage_path_patching
    from mechtest.tasks.registry import task_of

    task = task_of(base)

    def run():
        corrupt = task.corruption(base, model.tokenizer, seed=derived_seed(seed, "corruption"))
        if triage:
            result = triage_path_patching(model, base, corrupt, receivers=receivers, sizes=sizes, seed=seed,
                                          batch_size=batch_size, progress=progress).result
        else:
            result = path_patching(model, base, corrupt, receivers=receivers, seed=seed, batch_size=batch_size,
                                   progress=progress)
        stored = {g: s.scores.float().cpu() for g, s in result.steps.items()}
        stored.update({f"{g}/verified": s.verified for g, s in result.steps.items() if s.verified is not None})
        return stored

    if cache is None:
        scores = run()
    else:
        extra = {"receivers": receivers, "seed": seed, **({"triage": True, "sizes": sizes} if triage else {})}
        if task.name != DEFAULT_TASK:  # the same tokens may be another task's prompts, corrupted otherwise
            extra["task"] = task.identity()
        key = cache.key(fingerprint=model.fingerprint, inputs=base.input_ids, site="path_patching",
                        dtype=model.dtype, extra=extra)
        scores = cache.get_or_compute(key, run)
    return chain(lambda step: StepResult(step, scores[step.group], len(base), seed,
                                         verified=scores.get(f"{step.group}/verified")),
                 receivers, [g for g in scores if "/" not in g], task.plan)
