"""kap-forecast: outcomes and maintenance-timing forecasts for ketamine-assisted treatment.

Decision support for clinicians; never a suicide-risk assessment.
"""

__version__ = "0.1.0"
