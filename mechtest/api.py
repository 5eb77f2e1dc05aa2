"""The ``mechtest`` fixture's face: the session's :class:`~mechtest.service.Service` plus what only a test writer
asks for (the configured names, Hypothesis prompt strategies).

Everything below the face (claims, metrics, reports, the plan) receives the service, never this class.
"""

from __future__ import annotations

from mechtest.service import Service


class Mechtest(Service):
    """Models, data, circuits and method results by name, memoised for one pytest session."""

    @property
    def model_names(self) -> list[str]:
        return self.models.names

    @property
    def results(self):
        """Decided claim results on disk (``<cache dir>/claims``), read back for unchanged claims."""
        from mechtest.result_cache import ResultCache

        return ResultCache(self.settings.cache_dir)

    def prompts(self, model, n_boxes=None, **options):
        """A Hypothesis strategy of one-prompt examples for ``model``'s tokenizer (:func:`mechtest.properties.prompts`)."""
        from mechtest.properties import prompts

        return prompts(model, n_boxes, api=self, **options)


MechtestSession = Mechtest  # the name before 0.2
