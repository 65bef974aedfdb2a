"""A maintenance DAG that runs `statectl prune` daily on an Airflow worker.

The worker already has the deployment's configuration (metastore, [common.io] base path, connections),
which is exactly what statectl reads. `-o json` puts the prune report in the task log (and, as the last
line of output, in XCom). Exit code 9 (another prune holds the lock) skips the task instead of failing
it; 10 (stopped at --max-delete) and 8 (partly done) fail it, so that someone takes a look.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag

LOCK_HELD = 9


@dag(
    dag_id="statectl_prune",
    schedule="17 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=30)},
    tags=["maintenance"],
)
def statectl_prune():
    BashOperator(
        task_id="prune",
        bash_command="statectl prune --yes --max-delete 500000 -o json",
        skip_on_exit_code=LOCK_HELD,
        execution_timeout=timedelta(hours=2),
    )


statectl_prune()
