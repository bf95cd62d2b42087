"""The plan prepare hands the supervisor."""

from __future__ import annotations


def test_plan_round_trips_through_json() -> None:
    from mlflow_heroku_runtime.plan import Plan

    plan = Plan(
        runtime_dir="/tmp/x",
        nginx_config="/tmp/x/nginx.conf",
        port=5000,
        mlflow_ports=[40000, 40001],
        backend_store_uri="postgresql+psycopg://u:p%40ss@h/d",
        database_description="h:5432/d",
        artifacts_destination="s3://b/p",
        workers=1,
        db_wait_seconds=40,
        local=False,
        username="alice",
        password='pw with "quotes" and é',
        mlflow_env={"DO_NOT_TRACK": "true"},
        secrets=["pw", "p@ss"],
    )
    assert Plan.from_json(plan.to_json()) == plan
