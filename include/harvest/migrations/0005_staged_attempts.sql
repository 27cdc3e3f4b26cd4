-- Harvest results schema, version 5: a batch stages its results while it runs, one attempt at a time.
-- A batch task COPYs its results into harvest.staged_results in committed chunks as they finish,
-- under an id of its own attempt, so it holds one chunk in memory however long the batch. The rows
-- count only once the attempt ends whole: it then becomes the batch's row in harvest.staged_batches,
-- and the rows of every other attempt of that batch are deleted, in one short transaction. A retried
-- batch leaves one attempt's results, never a mix, and an attempt killed midway leaves rows that
-- nothing reads (deleted when the batch ends again, or with the run's staged rows once recorded).

ALTER TABLE harvest.staged_results ADD COLUMN attempt text NOT NULL DEFAULT '';
ALTER TABLE harvest.staged_results DROP CONSTRAINT staged_results_pkey;
ALTER TABLE harvest.staged_results ADD PRIMARY KEY (dag_run_id, batch, attempt, seq);
ALTER TABLE harvest.staged_results ALTER COLUMN attempt DROP DEFAULT;

CREATE TABLE harvest.staged_batches (
    dag_run_id  text        NOT NULL,
    batch       integer     NOT NULL,
    attempt     text        NOT NULL,  -- the attempt whose rows in staged_results are the batch's
    urls        integer     NOT NULL,
    staged_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_run_id, batch)
);

-- Batches staged before this version (each in one transaction, whole) keep counting.
INSERT INTO harvest.staged_batches (dag_run_id, batch, attempt, urls)
SELECT dag_run_id, batch, '', count(*) FROM harvest.staged_results GROUP BY dag_run_id, batch;
