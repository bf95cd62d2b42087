"""The tracking-server runtime: settings, nginx config, htpasswd and the supervisor.

Imported by ``image/entrypoint.py``. The supervisor process stays resident for the life of
the dyno, so nothing here imports mlflow, pandas or SQLAlchemy's ORM at module level:
MLflow runs in child processes (``migrate`` and uvicorn).
"""
