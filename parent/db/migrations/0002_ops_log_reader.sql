-- GET /api/logs/{session_id} shows a session's own operations log, so the app reads
-- it back. Only the public columns: details stay write-only for the app role.
GRANT SELECT (id, session_id, op, request_id, at) ON ops_logs TO app_service;
