"""Dashboard views of a study: plotly figures and a self-contained HTML report.

Built in two steps (see DESIGN): :mod:`autotune.dashboard.info` computes plain
dataclasses from a study (no plotting library; testable and reusable by a web app), and
:mod:`autotune.dashboard.figures` renders them as plotly figures.
:mod:`autotune.dashboard.report` puts every view into one HTML file that opens offline.

plotly is an extra (``pip install autotune[dashboard]``): it is imported only by
``figures`` and ``report``, so ``import autotune.dashboard.info`` needs nothing extra.
"""

from __future__ import annotations
