"""Post-deploy smoke check for an mlflow-heroku tracking server.

Run ``python -m smoke --help``. It needs only ``requests``: the checks talk to MLflow's REST
API and its artifact proxy directly, so the check runs anywhere without MLflow installed.
"""

from smoke.check import SmokeCheck, StepFailedError, StepResult
from smoke.target import Target, TargetError, resolve_target

__all__ = [
    "SmokeCheck",
    "StepFailedError",
    "StepResult",
    "Target",
    "TargetError",
    "resolve_target",
]
