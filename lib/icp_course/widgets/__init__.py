"""Tested ``ipywidgets`` factories the notebooks call (one module per notebook topic).

Every factory returns a widget (or a ``VBox``) whose callback recomputes something real;
slow callbacks use ``continuous_update=False`` and show progress. Factories also expose
their ``update(**values)`` function so tests can drive them without a browser.

Convention: the outer widget of every explorer calls ``box.add_class("icp-explorer")``.
The browser test (tests/test_zz_browser.py) finds the first ``.icp-explorer`` in each
notebook, moves its first slider or dropdown and checks that the rendered output changes.
"""
