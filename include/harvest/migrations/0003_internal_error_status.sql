-- Harvest results schema, version 3: the `internal_error` status, for a URL whose download hit a
-- bug in Harvest (the error names the exception) rather than a network or server failure.
-- Dropping and re-adding a CHECK constraint scans the table once to validate it; no rewrite.

ALTER TABLE harvest.downloads DROP CONSTRAINT downloads_status_known;
ALTER TABLE harvest.downloads ADD CONSTRAINT downloads_status_known CHECK (status IN (
    'ok', 'not_modified', 'rejected', 'blocked', 'http_error', 'timeout', 'connection_error',
    'too_large', 'too_many_redirects', 'invalid_content', 'skipped', 'internal_error'));
