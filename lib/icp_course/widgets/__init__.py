"""Tested ``ipywidgets`` factories the notebooks call (one module per notebook topic).

Every factory returns a widget (or a ``VBox``) whose callback recomputes something real;
slow callbacks use ``continuous_update=False`` and show progress. Factories also expose
their ``update(**values)`` function so tests can drive them without a browser.

Convention: the outer widget of every explorer calls ``box.add_class("icp-explorer")``.
The browser test (tests/test_zz_browser.py) finds every ``.icp-explorer`` in each notebook,
moves its first control (slider, dropdown, toggle or radio buttons, checkbox, or types into a
text box) — every control when the explorer also has the class ``icp-explorer-each-control``
— and checks that the rendered output changes. Keep an explorer's summary inside the widget
(an ``HTML`` child updated by the callback), so it never goes stale.
"""
