"""Figures and HTML pages: the only place that imports matplotlib.

Every renderer reads the files a command wrote (tables as CSV/JSON) and writes figures with
:func:`softhard.report.figures.savefig` (PNG, PDF and SVG, byte-for-byte reproducible):
``fig_boundary`` (Figures 1–2), ``fig_symmetry`` (Figure 3), ``fig_landscape``, ``fig_sweep``,
``fig_inspect``; ``reproduction`` writes the ``report.html`` of ``softhard reproduce``, ``html`` the one
of ``softhard inspect``.
"""
