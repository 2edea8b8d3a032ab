"""The spool, where a job arrives and where its results leave: the inbox (what counts as a spec, safe reads,
settling, the claim), intake (claim, duplicate or reject; recovery at start-up), the outbox and atomic files."""
