"""Figures drawn with matplotlib's object API on its Agg canvas: no pyplot state, no display."""
from __future__ import annotations

import io


def figure(**kwargs):
    """A matplotlib Figure (`kwargs` as Figure's) attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int = 100) -> bytes:
    """The PNG encoding of `fig` at `dpi`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
