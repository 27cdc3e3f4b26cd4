-- Harvest results schema, version 2: indexes for the Harvest page in the Airflow UI
-- (include/harvest/report.py). Its queries read one run key at a time or the newest runs, so their
-- cost follows the size of the run shown, not of the table.
--
-- Plain CREATE INDEX: migrations run in one transaction, where CONCURRENTLY is not allowed. On a
-- large existing table, writes to it wait while the index is built (about a second per million
-- rows on the reference machine), so apply this between runs.

-- The overview: the newest runs first.
CREATE INDEX runs_finished_at ON harvest.runs (finished_at DESC);
-- The per-run view and its tab on a DAG run find the run by the DAG run's id.
CREATE INDEX runs_dag_run_id ON harvest.runs (dag_run_id);
-- A run's failed URLs, by status then URL (paged list, CSV, hosts with the most failures). Partial:
-- it holds only failed rows, so it costs nothing for the URLs that succeed.
CREATE INDEX downloads_failed ON harvest.downloads (run_key, status, url)
    WHERE status NOT IN ('ok', 'not_modified');
