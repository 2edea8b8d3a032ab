"""The report: what it reads (data), computes (analysis, timeline, advice), draws (charts) and writes (render)."""
