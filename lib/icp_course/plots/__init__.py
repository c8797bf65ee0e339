"""Figure routines the notebooks call (one module per topic). Every figure has labelled
axes with units and returns the ``matplotlib`` Figure so tests can inspect it."""
