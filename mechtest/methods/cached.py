"""The cache layer: pure method results stored in the on-disk activation cache.

A result is keyed on the model's fingerprint, the prompts' token ids and every parameter that changes it,
so xdist workers, later runs and every claim asking for the same thing share one computation.
"""

from __future__ import annotations

def cached_path_patching(model, base, receivers: dict[str, int], *, seed: int = 0, cache=None):
    """The four path-patching steps on ``base`` (corrupted with ``seed + 1``), read from ``cache`` if there.

    Only the score matrices are stored; each step's receivers follow from the previous step's scores
    (``chain``), so the rebuilt result equals the computed one.
    """
    from mechtest.methods.path_patching import StepResult, chain, path_patching
    from mechtest.tasks.entity_tracking import path_patching_corruption

    def run():
        corrupt = path_patching_corruption(base, model.tokenizer, seed=seed + 1)
        result = path_patching(model, base, corrupt, receivers=receivers, seed=seed, progress=False)
        return {g: s.scores.float().cpu() for g, s in result.steps.items()}

    if cache is None:
        scores = run()
    else:
        key = cache.key(fingerprint=model.fingerprint, inputs=base.input_ids, site="path_patching",
                        dtype=model.dtype, extra={"receivers": receivers, "seed": seed})
        scores = cache.get_or_compute(key, run)
    return chain(lambda step: StepResult(step, scores[step.group], len(base), seed), receivers,
                 list(scores))
