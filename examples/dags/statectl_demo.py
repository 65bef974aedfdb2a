"""A small DAG that keeps task state (mapped too) and asset state, for the statectl demo."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ORDERS = Asset(name="warehouse/orders", uri="s3://warehouse/orders")

with DAG(dag_id="statectl_demo", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

    @task(inlets=[ORDERS], outlets=[ORDERS])
    def extract(task_state_store=None, asset_state_store=None) -> list[str]:
        # Small values stay inline in the DB row; large ones go to the bucket.
        task_state_store.set("attempts", 1)
        task_state_store.set("job_id", "job-20260101-0001", retention=NEVER_EXPIRE)
        task_state_store.set(
            "checkpoint",
            {"offset": 123456, "files": [f"part-{i:05d}.parquet" for i in range(40)]},
            retention=timedelta(hours=6),
        )
        state = asset_state_store[ORDERS]
        state.set("watermark", "2026-01-01T00:00:00+00:00")
        state.set("schema", {"columns": [{"name": f"col_{i}", "type": "string"} for i in range(12)]})
        return ["orders", "customers", "products"]

    @task
    def load(table: str, task_state_store=None, ti=None) -> None:
        task_state_store.set("status", "done")
        task_state_store.set("summary", {"table": table, "map_index": ti.map_index, "rows": 1000 * (ti.map_index + 1)})

    load.expand(table=extract())

if __name__ == "__main__":
    dag.test()
