-- lmq schema 4 for PostgreSQL: one ready index for plain rows instead of two.  Workers of
-- every queue walk the per-queue index queue by queue (the queues with pending tasks, a
-- loose index scan), as they already did while some queue was paused, so the index over
-- every queue's ready rows only cost each insert its upkeep (about a sixth of a bulk
-- enqueue).  schema.sql holds the same catalog; safe to run again.

DROP INDEX IF EXISTS {prefix}queue_tasks_ready;
