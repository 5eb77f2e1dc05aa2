"""Head heat maps: each path-patching step's (layers, heads) scores, the circuit's heads outlined.

matplotlib is imported only when a map is drawn (``pip install mechtest[report]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GROUP_TITLES = {"value_fetcher": "value fetcher (last)", "pos_transmitter": "position transmitter (last)",
                "pos_detector": "position detector (query label)", "struct_reader": "structure reader (context)"}


def heatmap(scores: dict[str, Any], path: Path, *, title: str, circuit=None) -> Path:
    """Draw each path-patching step's (layers, heads) scores, the circuit's heads of that group outlined.

    ``scores`` maps group -> 2-D array-like; ``circuit`` is a Circuit or None. Writes a PNG; returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    groups = [g for g in GROUP_TITLES if g in scores]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.0), squeeze=False)
    for ax, group in zip(axes[0], groups):
        data = np.asarray(scores[group], dtype=float)
        bound = float(np.nanmax(np.abs(data))) or 1.0
        image = ax.imshow(data, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        ax.set_title(GROUP_TITLES[group], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        if circuit is not None:
            for layer, head in circuit.heads(group):
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title + ("  (outlined: " + circuit.name + ")" if circuit is not None else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


