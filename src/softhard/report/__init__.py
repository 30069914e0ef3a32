"""Writers and figures: the only place that imports matplotlib.

``write_table(table, out)`` writes ``NAME.csv``, ``NAME.json`` and ``NAME.tex`` atomically;
figures are rendered from the written files alone (``render(out)``).
"""
