"""statectl: administration of Apache Airflow's task and asset state store (AIP-103)."""

__version__ = "0.1.0"
