"""The course tooling: plots, widgets, exercises' checks, notebook runner, site.

With the environment variable ``ICP_FIGCHECK`` set (the notebook tests set it), every figure
the course renders is checked for readability (:mod:`icp_course.figcheck`).
"""
from . import figcheck as _figcheck

_figcheck.install()
