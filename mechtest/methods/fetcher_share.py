"""Are the base's value fetchers still among the candidate's strong value-fetcher heads? With an interval.

Comparing each model's own discovered value fetchers as sets flips between samples whenever two heads of the
candidate are nearly tied: a fine-tune that kept the base's head and strengthened a neighbour was "not
preserved" on one seed and "preserved" on the next. This check instead measures, in the candidate, the
value-fetcher path-patching step (spec 4.4, senders at the last token, read directly at the logits) on every
prompt, as the change of the answer's probability ``p - p_clean`` (the paper's relative change times
``p_clean``: bounded, so the few prompts the candidate gets wrong, where ``p_clean ~ 0`` and the relative
change is huge, cannot swing the mean; it ranks heads as the ratio of means would), and asks what share of
the effect the base's k value fetchers carry against the candidate's k strongest *other* heads:

    share = a / (a + b),  a = -(sum of the base heads' mean scores),  b = -(sum of the k most negative other heads),

each clipped at 0 (a head that makes the answer likelier has a negative score). 1: no other head matters;
0.5: the strongest other heads are as strong (a tie); 0: the base's heads do nothing in the candidate. The
interval is a bootstrap over prompts that re-picks the strongest other heads in every resample, so a near
tie widens the interval around 0.5 instead of flipping a set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mechtest.errors import CircuitError
from mechtest.measure import Measurement, statistic
from mechtest.tasks.registry import task_of

GROUP = "value_fetcher"  # entity tracking's first step; another task's is its plan's first group


def fetcher_share(model, data, heads: Sequence[tuple[int, int]], *, seed: int = 0, batch_size: int = 50,
                  progress: bool = False) -> Measurement:
    """Share of the value-fetcher effect in ``model`` carried by ``heads`` (the base's value fetchers) against
    ``model``'s strongest other heads, on ``data`` (corrupt prompts drawn with ``seed``)."""
    from mechtest.methods.path_patching import Step, prompt_scores
    task = task_of(data)
    plan = task.step_plan[0]  # the step whose senders read the logits directly
    heads = [tuple(h) for h in heads]
    if not heads:
        raise CircuitError(f"the base circuit has no {plan.group} head to look for in the candidate")
    corrupt = task.corruption(data, model.tokenizer, seed=seed)
    senders = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    per_prompt = prompt_scores(model, data, corrupt, Step(plan.group, plan.position), seed=seed, batch_size=batch_size,
                               senders=senders, progress=progress, absolute=True).double().numpy()  # p - p_clean
    share = share_of(per_prompt, [senders.index(h) for h in heads], seed=seed)
    return replace(share, details={"model": model.name, "heads": [list(h) for h in heads]})


def share_of(per_prompt: np.ndarray, own: Sequence[int], *, seed: int = 0) -> Measurement:
    """The share (module docstring) of heads ``own`` (row indices) in per-prompt scores (heads, prompts), with
    a paired bootstrap over prompts that re-picks the strongest other heads in every resample."""
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    own = np.asarray(own)
    others = np.setdiff1d(np.arange(per_prompt.shape[0]), own)
    n = per_prompt.shape[1]

    def share(means: np.ndarray) -> np.ndarray:  # (B, heads) mean scores -> (B,)
        a = np.maximum(-means[:, own].sum(axis=1), 0.0)
        b = np.maximum(-np.sort(means[:, others], axis=1)[:, :len(own)].sum(axis=1), 0.0)
        total = a + b
        return np.divide(a, total, out=np.zeros_like(a), where=total > 0)

    def resampled(idx: np.ndarray) -> np.ndarray:  # idx: (B, n) resampled prompt indices
        counts = np.zeros(idx.shape)
        np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx.astype(int)), 1.0)
        return share(counts @ per_prompt.T / n)

    value = float(share(per_prompt.mean(axis=1)[None])[0])
    return statistic("value_fetcher_share", value, [np.arange(n)], resampled, seed=seed)
