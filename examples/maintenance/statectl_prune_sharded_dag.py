"""A maintenance DAG that prunes in N shards at once: `statectl prune --shard I/N`, one mapped task each.

Shard I of N takes the task state of the dags whose stable hash modulo N is I and the objects in those
dags' folders; asset state is shard 0's. The N shards together do exactly what one unsharded prune does,
in about 1/N of the time when the store and the workers allow N at once. N is the DAG param `shards`
(trigger with {"shards": 8} to change it for one run); keep it the same from run to run, since prunes
of different N never run at once (the later one exits 9 and its task is skipped).

The workers already have the deployment's configuration (metastore, [common.io] base path, connections),
which is exactly what statectl reads. Exit 9 (another prune holds the lock) skips a shard; 10 (stopped
at --max-delete) and 8 (partly done) fail it, so that someone takes a look; a retry re-runs only it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param, dag, task

LOCK_HELD = 9


@dag(
    dag_id="statectl_prune_sharded",
    schedule="17 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"shards": Param(4, type="integer", minimum=1, maximum=256, description="N: shards run at once")},
    default_args={"retries": 1, "retry_delay": timedelta(minutes=30)},
    tags=["maintenance"],
)
def statectl_prune_sharded() -> None:
    @task
    def shard_commands(**context: Any) -> list[str]:
        count = int(context["params"]["shards"])
        return [f"statectl prune --yes --shard {index}/{count} --max-delete 500000 -o json" for index in range(count)]

    BashOperator.partial(
        task_id="prune",
        skip_on_exit_code=LOCK_HELD,
        execution_timeout=timedelta(hours=2),
    ).expand(bash_command=shard_commands())


statectl_prune_sharded_dag = statectl_prune_sharded()
