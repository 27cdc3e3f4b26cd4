-- Harvest results schema, version 4: results are staged in Postgres as each batch ends.
-- A batch task COPYs its results here (replacing its own earlier rows, so a retried batch leaves
-- one copy); the reduce moves a run's staged rows into harvest.downloads and deletes them, in the
-- one transaction that decides what the run recorded. Nothing reads every result file at the end.
-- The Result columns are those of harvest.downloads (include/harvest/results.py DOWNLOAD_COLUMNS;
-- tests/include/test_results.py checks that both tables and that list agree).

CREATE TABLE harvest.staged_results (
    dag_run_id     text        NOT NULL,
    batch          integer     NOT NULL,  -- the batch's index in the run's plan
    seq            integer     NOT NULL,  -- position in the batch
    url            text        NOT NULL,
    status         text        NOT NULL,
    http_status    integer,
    final_url      text,
    content_type   text,
    bytes          bigint,
    sha256         text,
    width          integer,
    height         integer,
    storage_uri    text,
    attempts       integer     NOT NULL,
    elapsed_ms     integer     NOT NULL,
    error          text,
    etag           text,
    last_modified  text,
    fetched_at     timestamptz,
    source_line    integer,
    meta           jsonb,
    staged_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_run_id, batch, seq)
);
