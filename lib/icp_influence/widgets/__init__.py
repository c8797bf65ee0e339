"""Tested ``ipywidgets`` factories the notebooks call (one module per notebook topic).

Every factory returns a widget (or a ``VBox``) whose callback recomputes something real;
slow callbacks use ``continuous_update=False`` and show progress. Factories also expose
their ``update(**values)`` function so tests can drive them without a browser.
"""
