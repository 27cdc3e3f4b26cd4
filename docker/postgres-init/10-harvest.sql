-- Run by the postgres image (as POSTGRES_USER `airflow`, a superuser) from /docker-entrypoint-initdb.d,
-- once, when the data volume is first initialised; the image skips these scripts on an existing volume.
--
-- Only the database is created here. Its schema (`harvest.downloads`, `harvest.objects`, ...) comes from
-- Harvest's versioned migrations, applied by the airflow-init service (`python -m include.harvest.migrations`),
-- so the compose deployment, the local stack and the tests share one migration path.
CREATE DATABASE harvest OWNER airflow;
